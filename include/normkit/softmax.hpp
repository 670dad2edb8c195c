// normkit/softmax.hpp — Softmax<T> and LogSoftmax<T> over any axis of an Eigen tensor.
//
//   softmax:      y = exp(x - max) / sum(exp(x - max))         over `axis` (SoftmaxOptions, default -1)
//   log-softmax:  y = x - max - log(sum(exp(x - max)))
//   backward:     softmax dx = y * (dy - sum(dy * y)),  log-softmax dx = dy - exp(y) * sum(dy)
// Numerics: the max and the sum of exponentials come from one pass (an online max with a rescaled
// sum, core/softmax_kernels.hpp) in accum_t<T>, x - max is taken exactly, and each output is rounded
// once to T. Logits of any finite magnitude give finite results; -Inf is probability 0; a slice of
// only -Inf, or with a NaN or +Inf, gives NaN in that slice only. float outputs are within 2 ulp of
// the float64 result for ordinary data (docs/api.md gives the measured maximum).
// Axis mapping: the axis fastest in memory (last of RowMajor, first of ColMajor) makes rows
// [1][slices][C]; any other axis makes `blocks` column shapes [C][faster][1], one per index of the
// slower axes. y may share storage with x, dx with dy; results do not depend on the thread count.
#pragma once

#include <string>

#include "core/softmax_policies.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit {

struct SoftmaxOptions {
  Eigen::Index axis = -1;  // negative: counted from the end
};

namespace detail {

// The groups of a reduction over `axis` as core shapes: `blocks` copies of `shape`, block b at
// element offset b * block_size, its groups numbered b * shape.groups + g (memory order of the other
// axes).
struct AxisGroups {
  core::GroupShape shape;
  Index blocks = 1, block_size = 0;
};
inline AxisGroups axis_groups(const Index* dims, Index rank, Index axis, bool row_major) {
  Index faster = 1, slower = 1;
  for (Index a = 0; a < rank; ++a) {
    if (a == axis) continue;
    if ((a > axis) == row_major) faster *= dims[a];
    else slower *= dims[a];
  }
  const Index C = dims[axis];
  if (faster == 1) return {core::GroupShape{1, slower, C}, 1, slower * C};
  return {core::GroupShape{C, faster, 1}, slower, C * faster};
}

inline Index resolve_axis(const std::string& where, Index axis, Index rank) {
  const Index a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw_invalid(where,
                  "axis " + std::to_string(axis) + " is out of range for a tensor of rank " + std::to_string(rank));
  return a;
}

template <class T, bool Log>
class SoftmaxFunctor {
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  using A = accum_t<T>;

 public:
  explicit SoftmaxFunctor(SoftmaxOptions options = {}) : options_(options) {}
  const SoftmaxOptions& options() const { return options_; }

  template <class X, class Y>
  void forward(const X& x, Y&& y) const {
    forward_on(core::SerialExecutor{}, x, y);
  }
  template <class X, class Y>
  void forward(const Eigen::ThreadPoolDevice& device, const X& x, Y&& y) const {
    forward_on(PoolExecutor{device}, x, y);
  }
  template <class X>
  auto operator()(const X& x) const {
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> y(x.dimensions());
    forward(x, y);
    return y;
  }
  template <class Y, class DY, class DX>
  void backward(const Y& y, const DY& dy, DX&& dx) const {
    backward_on(core::SerialExecutor{}, y, dy, dx);
  }
  template <class Y, class DY, class DX>
  void backward(const Eigen::ThreadPoolDevice& device, const Y& y, const DY& dy, DX&& dx) const {
    backward_on(PoolExecutor{device}, y, dy, dx);
  }

 private:
  static std::string name() { return Log ? "LogSoftmax" : "Softmax"; }

  template <class Exec, class X, class Y>
  void forward_on(const Exec& exec, const X& x, Y& y) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && std::is_same_v<scalar_t<Y>, T>, "normkit: x and y must hold T");
    static_assert(rank_v<X> == rank_v<Y> && rank_v<X> >= 1, "normkit: x and y must have the same rank, at least 1");
    const std::string where = name() + "::forward";
    const Index axis = resolve_axis(where, options_.axis, rank_v<X>);
    check_same_dims(where, "y", y, "x", x);
    const auto dims = dims_of(x);
    const AxisGroups ag = axis_groups(dims.data(), rank_v<X>, axis, layout_v<X> == Eigen::RowMajor);
    if (ag.shape.size() == 0) return;
    OutputIn<layout_v<X>, Y> out(y);
    constexpr core::SoftmaxSweep mode = Log ? core::SoftmaxSweep::LogSoftmax : core::SoftmaxSweep::Softmax;
    core::SoftmaxForward<mode, A, core::LoadX<T>, core::StoreY<T>> pol;
    pol.s = ag.shape;
    pol.stream = core::stream_output<T>(ag.shape.size() * ag.blocks);
    for (Index b = 0; b < ag.blocks; ++b) {
      pol.x = core::LoadX<T>{x.data() + b * ag.block_size};
      pol.y = core::StoreY<T>{out.data() + b * ag.block_size};
      core::run_groups(exec, ag.shape, pol, core::Passes::Both);
    }
    out.commit();
  }

  template <class Exec, class Y, class DY, class DX>
  void backward_on(const Exec& exec, const Y& y, const DY& dy, DX& dx) const {
    static_assert(std::is_same_v<scalar_t<Y>, T> && std::is_same_v<scalar_t<DY>, T> && std::is_same_v<scalar_t<DX>, T>,
                  "normkit: y, dy and dx must hold T");
    static_assert(rank_v<Y> == rank_v<DY> && rank_v<Y> == rank_v<DX> && rank_v<Y> >= 1,
                  "normkit: y, dy and dx must have the same rank, at least 1");
    const std::string where = name() + "::backward";
    const Index axis = resolve_axis(where, options_.axis, rank_v<Y>);
    check_same_dims(where, "dy", dy, "y", y);
    check_same_dims(where, "dx", dx, "y", y);
    const auto dims = dims_of(y);
    const AxisGroups ag = axis_groups(dims.data(), rank_v<Y>, axis, layout_v<Y> == Eigen::RowMajor);
    if (ag.shape.size() == 0) return;
    Eigen::Tensor<T, rank_v<Y>, layout_v<Y>> dy_copy;
    const T* dyp = in_layout<layout_v<Y>>(dy, dy_copy);
    OutputIn<layout_v<Y>, DX> out(dx);
    core::SoftmaxBackward<!Log, A, T, core::StoreY<T>> pol;
    pol.s = ag.shape;
    pol.stream = core::stream_output<T>(ag.shape.size() * ag.blocks);
    for (Index b = 0; b < ag.blocks; ++b) {
      pol.y = y.data() + b * ag.block_size;
      pol.dy = dyp + b * ag.block_size;
      pol.dx = core::StoreY<T>{out.data() + b * ag.block_size};
      core::run_groups(exec, ag.shape, pol, core::Passes::Both);
    }
    out.commit();
  }

  SoftmaxOptions options_;
};

}  // namespace detail

// softmax over options.axis: forward(x, y), backward(y, dy, dx) (y: forward's output).
template <class T>
class Softmax : public detail::SoftmaxFunctor<T, false> {
 public:
  explicit Softmax(SoftmaxOptions options = {}) : detail::SoftmaxFunctor<T, false>(options) {}
};

// log-softmax over options.axis: forward(x, y), backward(y, dy, dx) (y: forward's output).
template <class T>
class LogSoftmax : public detail::SoftmaxFunctor<T, true> {
 public:
  explicit LogSoftmax(SoftmaxOptions options = {}) : detail::SoftmaxFunctor<T, true>(options) {}
};

}  // namespace normkit
