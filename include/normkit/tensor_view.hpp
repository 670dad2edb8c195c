// normkit/tensor_view.hpp — maps an Eigen tensor onto the core's [outer][groups][inner] shape.
//
// Axes are always named as in PyTorch (dimension(0) is N / batch), whatever the layout; the layout
// only decides which shape the core sees:
//   trailing_groups (LayerNorm, RMSNorm): rows = product of the leading dims, features = product of
//     the normalized trailing dims. RowMajor -> [1][rows][features]; ColMajor -> [features][rows][1].
//   channel_groups (BatchNorm): before/after = products of the dims before/after the channel axis.
//     RowMajor -> [before][C][after]; ColMajor -> [after][C][before].
// In a ColMajor tensor several leading (or normalized) dims flatten in column-major order, while the
// contract orders stats rows and weight entries row-major; colmajor_to_rowmajor gives that map.
// Inputs and outputs of another layout than x's go through a converted copy (in_layout, OutputIn).
#pragma once

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "core/groups.hpp"
#include "errors.hpp"
#include "options.hpp"

namespace normkit::detail {

using Eigen::Index;

template <class X>
using plain_t = std::remove_cv_t<std::remove_reference_t<X>>;
template <class X>
inline constexpr int rank_v = plain_t<X>::NumDimensions;
template <class X>
inline constexpr int layout_v = static_cast<int>(plain_t<X>::Layout);
template <class X>
using scalar_t = std::remove_const_t<typename plain_t<X>::Scalar>;

template <class X>
std::array<Index, rank_v<X>> dims_of(const X& x) {
  std::array<Index, rank_v<X>> d{};
  // Through dimensions()[i]: Tensor::dimension takes a std::size_t, TensorMap::dimension an Index.
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = x.dimensions()[i];
  return d;
}

template <std::size_t R>
std::string dims_string(const std::array<Index, R>& d) { return detail::dims_string(d, Index(R)); }

inline Index product(const Index* d, Index count) {
  Index p = 1;
  for (Index i = 0; i < count; ++i) p *= d[i];
  return p;
}

inline core::GroupShape trailing_groups(const Index* dims, Index rank, Index normalized_rank, bool row_major) {
  const Index rows = product(dims, rank - normalized_rank), features = product(dims + rank - normalized_rank, normalized_rank);
  return row_major ? core::GroupShape{1, rows, features} : core::GroupShape{features, rows, 1};
}

inline core::GroupShape channel_groups(const Index* dims, Index rank, Index axis, bool row_major) {
  const Index before = product(dims, axis), after = product(dims + axis + 1, rank - axis - 1);
  return row_major ? core::GroupShape{before, dims[axis], after} : core::GroupShape{after, dims[axis], before};
}

// Calls f(j, r) for every element of a tensor of dims[0..count): j is its column-major linear index,
// r its row-major one.
template <class F>
void for_each_index_pair(const Index* dims, Index count, F&& f) {
  const Index n = product(dims, count);
  std::vector<Index> idx(static_cast<std::size_t>(count), 0);
  for (Index j = 0; j < n; ++j) {
    Index r = 0;
    for (Index a = 0; a < count; ++a) r = r * dims[a] + idx[static_cast<std::size_t>(a)];
    f(j, r);
    for (Index a = 0; a < count && ++idx[static_cast<std::size_t>(a)] == dims[a]; ++a) idx[static_cast<std::size_t>(a)] = 0;
  }
}

// map[j] = the row-major linear index of the element whose column-major linear index is j.
inline std::vector<Index> colmajor_to_rowmajor(const Index* dims, Index count) {
  std::vector<Index> map(static_cast<std::size_t>(product(dims, count)));
  for_each_index_pair(dims, count, [&](Index j, Index r) { map[static_cast<std::size_t>(j)] = r; });
  return map;
}

// out[j] = in[map[j]] (gather into memory order), or out[map[j]] = in[j] (scatter back).
template <class Out, class In>
void gather(Out* out, const In* in, const std::vector<Index>& map) {
  for (std::size_t j = 0; j < map.size(); ++j) out[j] = static_cast<Out>(in[map[j]]);
}
template <class Out, class In>
void scatter(Out* out, const In* in, const std::vector<Index>& map) {
  for (std::size_t j = 0; j < map.size(); ++j) out[map[j]] = static_cast<Out>(in[j]);
}

// x's data in layout L: its own buffer when it already is, else a copy reordered into `copy`.
template <int L, class X>
const scalar_t<X>* in_layout(const X& x, Eigen::Tensor<scalar_t<X>, rank_v<X>, L>& copy) {
  if constexpr (layout_v<X> == L) {
    return x.data();
  } else {
    const auto dims = dims_of(x);
    copy.resize(dims);
    const scalar_t<X>* src = x.data();
    scalar_t<X>* dst = copy.data();
    for_each_index_pair(dims.data(), rank_v<X>, [&](Index j, Index r) {
      if (L == Eigen::ColMajor) dst[j] = src[r];
      else dst[r] = src[j];
    });
    return dst;
  }
}

// Where to write an output that must end up in `y` but is computed in layout L.
template <int L, class Y>
class OutputIn {
 public:
  explicit OutputIn(Y& y) : y_(y) {
    if constexpr (layout_v<Y> != L) copy_.resize(y.dimensions());
  }
  scalar_t<Y>* data() {
    if constexpr (layout_v<Y> == L) return y_.data();
    else return copy_.data();
  }
  void commit() {
    if constexpr (layout_v<Y> != L) {
      Eigen::Tensor<scalar_t<Y>, rank_v<Y>, layout_v<Y>> converted;
      in_layout<layout_v<Y>>(copy_, converted);
      std::copy(converted.data(), converted.data() + converted.size(), y_.data());
    }
  }

 private:
  Y& y_;
  Eigen::Tensor<scalar_t<Y>, rank_v<Y>, L> copy_;
};

// Shape checks shared by the functors.
template <class A, class B>
void check_same_dims(const std::string& where, const char* a_name, const A& a, const char* b_name, const B& b) {
  if (dims_of(a) != dims_of(b))
    throw_shape(where, std::string(a_name) + " has dimensions " + dims_string(dims_of(a)) + " but " + b_name +
                           " has " + dims_string(dims_of(b)) + " (they must be equal)");
}

inline void check_size(const std::string& where, const std::string& what, Index expected, Index actual) {
  if (expected != actual)
    throw_shape(where, what + " has dimensions [" + std::to_string(actual) + "] but [" + std::to_string(expected) +
                           "] was expected");
}

inline void check_eps(const std::string& where, double eps) {
  if (!(eps >= 0)) throw_invalid(where, "eps must be a number >= 0, got " + std::to_string(eps));
}

}  // namespace normkit::detail
