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
// What is not a tensor (a Matrix, an expression) or not writable as an output stops the build here
// with one static_assert that says what to pass instead (tensor_arg, OutputIn; tests/compile_fail).
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

// What the functors accept as x, y, dy, dx: a dense Eigen::Tensor, an Eigen::TensorMap of one (const
// or not), or an Eigen::TensorFixedSize. An Eigen::Matrix or a tensor expression (x * 2.f,
// x.chip(0, 0)) has no storage of that shape, and used to fail deep inside this file with errors
// such as "'Layout' is not a member". tensor_arg<X>, which every functor reaches first through
// scalar_t/rank_v/layout_v, stops the build with one sentence saying what to pass instead; for
// such an X it still answers with stand-ins, so that the sentence is the first error and few follow.
template <class X>
struct is_tensor : std::false_type {};
template <class S, int R, int O, class I>
struct is_tensor<Eigen::Tensor<S, R, O, I>> : std::true_type {};
template <class S, class D, int O, class I>
struct is_tensor<Eigen::TensorFixedSize<S, D, O, I>> : std::true_type {};
template <class Plain, int O, template <class> class MakePointer>
struct is_tensor<Eigen::TensorMap<Plain, O, MakePointer>> : is_tensor<std::remove_const_t<Plain>> {};
template <class X>
inline constexpr bool is_tensor_v = is_tensor<plain_t<X>>::value;

template <class X>
inline constexpr bool is_tensor_expression_v =
    !is_tensor_v<X> && std::is_base_of_v<Eigen::TensorBase<plain_t<X>, Eigen::ReadOnlyAccessors>, plain_t<X>>;

// The stand-ins for a rejected X: its own Scalar and NumDimensions where it has them (a Matrix and
// every tensor expression do), so that the functors' "must hold T" and "same rank" checks stay quiet.
template <class X, class = void>
struct scalar_or_void {
  using type = void;
};
template <class X>
struct scalar_or_void<X, std::void_t<typename X::Scalar>> {
  using type = typename X::Scalar;
};
template <class X, class = void>
struct rank_or_one : std::integral_constant<int, 1> {};
template <class X>
struct rank_or_one<X, std::void_t<decltype(X::NumDimensions)>> : std::integral_constant<int, int(X::NumDimensions)> {};

template <class X, bool = is_tensor_v<X>>
struct tensor_arg {
  using scalar = std::remove_const_t<typename X::Scalar>;
  static constexpr int rank = X::NumDimensions;
  static constexpr int layout = static_cast<int>(X::Layout);
};
template <class X>
struct tensor_arg<X, false> {
  // Exactly one of the two fires.
  static_assert(!is_tensor_expression_v<X>,
                "normkit: x, y, dy and dx must be an Eigen::Tensor or an Eigen::TensorMap, not a tensor expression "
                "such as x * 2.f or x.chip(0, 0): evaluate the expression into an Eigen::Tensor first, e.g. "
                "Eigen::Tensor<float, 2> x2 = x * 2.f;");
  static_assert(is_tensor_expression_v<X>,
                "normkit: x, y, dy and dx must be an Eigen::Tensor or an Eigen::TensorMap, not an Eigen::Matrix, "
                "Array or other type: wrap a Matrix m without copying, e.g. "
                "Eigen::TensorMap<Eigen::Tensor<float, 2>>(m.data(), m.rows(), m.cols()) "
                "(Eigen::Tensor<float, 2, Eigen::RowMajor> for a RowMajor Matrix)");
  using scalar = std::remove_const_t<typename scalar_or_void<X>::type>;
  static constexpr int rank = rank_or_one<X>::value;
  static constexpr int layout = Eigen::ColMajor;
};

template <class X>
inline constexpr int rank_v = tensor_arg<plain_t<X>>::rank;
template <class X>
inline constexpr int layout_v = tensor_arg<plain_t<X>>::layout;
template <class X>
using scalar_t = typename tensor_arg<plain_t<X>>::scalar;

// Whether an output can be written through: not a const Tensor&, nor a TensorMap<const Tensor<...>>.
// A rejected X counts as writable: tensor_arg has already said what is wrong with it.
template <class Y, class = void>
struct writable : std::true_type {};
template <class Y>
struct writable<Y, std::enable_if_t<is_tensor_v<Y>>>
    : std::bool_constant<!std::is_const_v<std::remove_pointer_t<decltype(std::declval<Y&>().data())>>> {};

template <class X>
std::array<Index, rank_v<X>> dims_of(const X& x) {
  std::array<Index, rank_v<X>> d{};
  // Through dimensions()[i]: Tensor::dimension takes a std::size_t, TensorMap::dimension an Index.
  if constexpr (is_tensor_v<X>)  // else: a rejected X (tensor_arg), whose build is failing anyway
    for (std::size_t i = 0; i < d.size(); ++i) d[i] = x.dimensions()[i];
  return d;
}

template <std::size_t R>
std::string dims_string(const std::array<Index, R>& d) {
  return detail::dims_string(d, Index(R));
}

inline Index product(const Index* d, Index count) {
  Index p = 1;
  for (Index i = 0; i < count; ++i) p *= d[i];
  return p;
}

inline core::GroupShape trailing_groups(const Index* dims, Index rank, Index normalized_rank, bool row_major) {
  const Index rows = product(dims, rank - normalized_rank),
              features = product(dims + rank - normalized_rank, normalized_rank);
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
    for (Index a = 0; a < count && ++idx[static_cast<std::size_t>(a)] == dims[a]; ++a)
      idx[static_cast<std::size_t>(a)] = 0;
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
  static_assert(writable<std::remove_reference_t<Y>>::value,
                "normkit: the output (y of forward, dx of backward) must be writable: pass an Eigen::Tensor, or an "
                "Eigen::TensorMap<Eigen::Tensor<...>> over non-const data, not a const Tensor& or an "
                "Eigen::TensorMap<const Eigen::Tensor<...>>");

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
    throw_shape(where, std::string(a_name) + " has dimensions " + dims_string(dims_of(a)) + " but " + b_name + " has " +
                           dims_string(dims_of(b)) + " (they must be equal)");
}

inline void check_size(const std::string& where, const std::string& what, Index expected, Index actual) {
  if (expected != actual)
    throw_shape(where, what + " has dimensions [" + std::to_string(actual) + "] but [" + std::to_string(expected) +
                           "] was expected");
}

// A parameter (weight, bias, running statistics) must keep the size it was constructed with, or stay
// empty when absent: a resized one would be read out of bounds, an emptied one silently dropped.
inline void check_param(const std::string& where, const char* name, Index expected, Index actual) {
  if (expected == actual) return;
  throw_shape(where, std::string(name) + "() has dimensions [" + std::to_string(actual) + "] but [" +
                         std::to_string(expected) + "] was expected (" +
                         (expected == 0 ? "this functor was built without it; it cannot be added later"
                                        : "a parameter keeps its size; it cannot be removed or resized") +
                         ")");
}

inline void check_eps(const std::string& where, double eps) {
  if (!(eps >= 0)) throw_invalid(where, "eps must be a number >= 0, got " + number_string(eps));
}

}  // namespace normkit::detail
