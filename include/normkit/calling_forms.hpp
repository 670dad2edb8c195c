// normkit/calling_forms.hpp — the calling forms every normalization functor offers, written once.
//
//   forward(x, y)                      on the calling thread
//   forward(device, x, y)              on an Eigen::ThreadPoolDevice (same bits: thread_pool.hpp)
//   operator()(x)                      y = forward(x) as a new tensor of x's dimensions and layout
//   backward(x, dy, stats, dx)         and backward(device, x, dy, stats, dx)
//
// A functor derives from CallingForms<Self, T, P> (befriending it) and supplies forward_on(exec, x, y)
// and backward_on(exec, x, dy, stats, dx) over an executor (core/parallel.hpp). forward is const
// exactly where the functor's forward_on is: LayerNorm and GroupNorm hold no running state, BatchNorm
// and InstanceNorm update theirs in training.
#pragma once

#include "core/parallel.hpp"
#include "options.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit::detail {

template <class Self, class T, class P>
class CallingForms {
 public:
  template <class X, class Y>
  NormStats<T> forward(const X& x, Y&& y) {
    return self().forward_on(core::SerialExecutor{}, x, y);
  }
  template <class X, class Y>
  NormStats<T> forward(const X& x, Y&& y) const {
    return self().forward_on(core::SerialExecutor{}, x, y);
  }
  template <class X, class Y>
  NormStats<T> forward(const Eigen::ThreadPoolDevice& device, const X& x, Y&& y) {
    return self().forward_on(PoolExecutor{device}, x, y);
  }
  template <class X, class Y>
  NormStats<T> forward(const Eigen::ThreadPoolDevice& device, const X& x, Y&& y) const {
    return self().forward_on(PoolExecutor{device}, x, y);
  }
  template <class X>
  auto operator()(const X& x) {
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> y(x.dimensions());
    forward(x, y);
    return y;
  }
  template <class X>
  auto operator()(const X& x) const {
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> y(x.dimensions());
    forward(x, y);
    return y;
  }

  template <class X, class DY, class DX>
  NormGrads<P> backward(const X& x, const DY& dy, const NormStats<T>& stats, DX&& dx) const {
    return self().backward_on(core::SerialExecutor{}, x, dy, stats, dx);
  }
  template <class X, class DY, class DX>
  NormGrads<P> backward(const Eigen::ThreadPoolDevice& device, const X& x, const DY& dy, const NormStats<T>& stats,
                        DX&& dx) const {
    return self().backward_on(PoolExecutor{device}, x, dy, stats, dx);
  }

 protected:
  CallingForms() = default;

 private:
  Self& self() { return static_cast<Self&>(*this); }
  const Self& self() const { return static_cast<const Self&>(*this); }
};

}  // namespace normkit::detail
