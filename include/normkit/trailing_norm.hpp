// normkit/trailing_norm.hpp — what LayerNorm and RMSNorm share: normalization over the trailing
// `normalized_shape` axes of a tensor, one group per index of the leading axes.
//
// The two differ only in `centered` (LayerNorm subtracts the mean, RMSNorm does not) and in their
// option defaults; see layer_norm.hpp and rms_norm.hpp for the formulas. This class maps a tensor
// onto the core (tensor_view.hpp), checks shapes before anything is written, and reorders stats and
// parameters between the contract's row-major order and a ColMajor tensor's memory order.
// T stores x, y, dy, dx; P stores weight, bias and their gradients (options.hpp).
#pragma once

#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "core/groups.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "state.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit::detail {

template <class T, class P>
class TrailingNorm {
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(is_param_type_v<T, P>, "normkit: the parameter type P must be T or accum_t<T> (float beside bfloat16/half)");
  using A = accum_t<T>;

 public:
  Eigen::Tensor<P, 1>& weight() { return weight_; }
  const Eigen::Tensor<P, 1>& weight() const { return weight_; }
  Eigen::Tensor<P, 1>& bias() { return bias_; }
  const Eigen::Tensor<P, 1>& bias() const { return bias_; }
  const std::vector<Index>& normalized_shape() const { return shape_; }

  // State in PyTorch's names (state.hpp): "weight", "bias" when present.
  StateDict<P> state_dict() const { return state_of<P>(slots_of(*this), std::nullopt); }
  void load_state_dict(const StateDict<P>& state, bool strict = true) {
    load_state(name_ + "::load_state_dict", slots_of(*this), state, nullptr, strict);
  }
  void set_weight(const P* data, Index size) { set_param(name_ + "::set_weight", slots_of(*this)[0], data, size); }
  void set_weight(const std::vector<P>& v) { set_weight(v.data(), static_cast<Index>(v.size())); }
  void set_bias(const P* data, Index size) { set_param(name_ + "::set_bias", slots_of(*this)[1], data, size); }
  void set_bias(const std::vector<P>& v) { set_bias(v.data(), static_cast<Index>(v.size())); }

  template <class X, class Y>
  NormStats<T> forward(const X& x, Y&& y) const { return forward_on(core::SerialExecutor{}, x, y); }
  template <class X, class Y>
  NormStats<T> forward(const Eigen::ThreadPoolDevice& device, const X& x, Y&& y) const {
    return forward_on(PoolExecutor{device}, x, y);
  }
  // y = forward(x) as a new tensor of x's dimensions and layout.
  template <class X>
  auto operator()(const X& x) const {
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> y(x.dimensions());
    forward(x, y);
    return y;
  }

  template <class X, class DY, class DX>
  NormGrads<P> backward(const X& x, const DY& dy, const NormStats<T>& stats, DX&& dx) const {
    return backward_on(core::SerialExecutor{}, x, dy, stats, dx);
  }
  template <class X, class DY, class DX>
  NormGrads<P> backward(const Eigen::ThreadPoolDevice& device, const X& x, const DY& dy, const NormStats<T>& stats,
                        DX&& dx) const {
    return backward_on(PoolExecutor{device}, x, dy, stats, dx);
  }

 protected:
  TrailingNorm(std::string name, std::vector<Index> normalized_shape, double eps, bool affine, bool bias,
               EpsPlacement placement, bool centered)
      : name_(std::move(name)), shape_(std::move(normalized_shape)), eps_(eps),
        eps_inside_(placement == EpsPlacement::InsideSqrt), centered_(centered) {
    check_eps(name_, eps_);
    // Each dim checked before multiplying: a product of huge dims would overflow (UB; the fuzzer's
    // normalized_shape [2^32, 2^32]), and two negatives would multiply to a positive size.
    bool valid = !shape_.empty();
    Index size = 1;
    for (const Index d : shape_) {
      if (d <= 0 || size > std::numeric_limits<Index>::max() / d) {
        valid = false;
        break;
      }
      size *= d;
    }
    if (!valid)
      throw_invalid(name_, "normalized_shape " + dims_string(shape_, Index(shape_.size())) +
                               " must have at least one axis and no zero-sized or negative dimension");
    features_ = size;
    weight_size_ = affine ? features_ : 0;
    bias_size_ = affine && bias ? features_ : 0;
    if (affine) weight_ = Eigen::Tensor<P, 1>(features_).setConstant(P(1));
    if (affine && bias) bias_ = Eigen::Tensor<P, 1>(features_).setConstant(P(0));
  }

 private:
  // Checks x against normalized_shape; returns the core shape for x's layout.
  template <class X>
  core::GroupShape shape_of(const std::string& where, const X& x) const {
    const auto dims = dims_of(x);
    const Index rank = rank_v<X>, k = Index(shape_.size());
    if (rank < k)
      throw_shape(where, "x has dimensions " + dims_string(dims) + " (rank " + std::to_string(rank) +
                             ") but normalized_shape " + dims_string(shape_, k) + " needs rank >= " + std::to_string(k));
    for (Index a = 0; a < k; ++a)
      if (dims[std::size_t(rank - k + a)] != shape_[std::size_t(a)])
        throw_shape(where, "x has dimensions " + dims_string(dims) + " whose trailing dimensions " +
                               dims_string(dims.data() + (rank - k), k) + " must equal normalized_shape " +
                               dims_string(shape_, k));
    return trailing_groups(dims.data(), rank, k, layout_v<X> == Eigen::RowMajor);
  }

  // weight_ and bias_ with their names and required sizes; const or not as `self` is.
  template <class Self>
  static auto slots_of(Self& self) {
    using Tensor = std::conditional_t<std::is_const_v<Self>, const Eigen::Tensor<P, 1>, Eigen::Tensor<P, 1>>;
    return std::array<ParamSlot<Tensor>, 2>{
        {{"weight", &self.weight_, self.weight_size_}, {"bias", &self.bias_, self.bias_size_}}};
  }

  void check_params(const std::string& where) const {
    for (const auto& slot : slots_of(*this)) check_param(where, slot.name, slot.size, slot.tensor->size());
  }

  // Memory order differs from the contract's row-major order only for ColMajor tensors with more
  // than one leading axis (stats) or more than one normalized axis (weight, bias).
  template <class X>
  std::vector<Index> stats_order(const X& x) const {
    const Index lead = rank_v<X> - Index(shape_.size());
    if (layout_v<X> == Eigen::RowMajor || lead <= 1) return {};
    return colmajor_to_rowmajor(dims_of(x).data(), lead);
  }
  template <class X>
  std::vector<Index> param_order() const {
    if (layout_v<X> == Eigen::RowMajor || shape_.size() <= 1) return {};
    return colmajor_to_rowmajor(shape_.data(), Index(shape_.size()));
  }

  // The parameters in memory order: their own buffers, or gathered copies in `copy`.
  const P* param(const Eigen::Tensor<P, 1>& p, const std::vector<Index>& order, std::vector<P>& copy) const {
    if (p.size() == 0) return nullptr;
    if (order.empty()) return p.data();
    copy.resize(order.size());
    gather(copy.data(), p.data(), order);
    return copy.data();
  }

  core::NormParams<P> params(const P* w, const P* b) const {
    core::NormParams<P> p;
    p.centered = centered_;
    p.eps = eps_;
    p.eps_inside_sqrt = eps_inside_;
    p.weight = w;
    p.bias = b;
    return p;
  }

  template <class Exec, class X, class Y>
  NormStats<T> forward_on(const Exec& exec, const X& x, Y& y) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && std::is_same_v<scalar_t<Y>, T>, "normkit: x and y must hold T");
    static_assert(rank_v<X> == rank_v<Y>, "normkit: x and y must have the same rank");
    const std::string where = name_ + "::forward";
    const core::GroupShape s = shape_of(where, x);
    check_same_dims(where, "y", y, "x", x);
    check_params(where);

    const Index rows = s.groups;
    NormStats<T> stats;
    stats.rstd.resize(rows);
    if (centered_) stats.mean.resize(rows), stats.mean_lo.resize(rows);
    const std::vector<Index> rows_order = stats_order(x), params_order = param_order<X>();
    std::vector<A> mem(rows_order.empty() ? 0 : std::size_t(3 * rows));  // stats in memory order, scattered below
    A* mean = centered_ ? (mem.empty() ? stats.mean.data() : mem.data()) : nullptr;
    A* mean_lo = centered_ ? (mem.empty() ? stats.mean_lo.data() : mem.data() + rows) : nullptr;
    A* rstd = mem.empty() ? stats.rstd.data() : mem.data() + 2 * rows;
    std::vector<P> w_copy, b_copy;
    const P* w = param(weight_, params_order, w_copy);
    const P* b = param(bias_, params_order, b_copy);

    OutputIn<layout_v<X>, Y> out(y);
    core::forward_groups<A>(exec, x.data(), out.data(), s, params(w, b), core::StatsArrays<A>{mean, mean_lo, rstd},
                            core::StatsMode::Compute);
    out.commit();
    if (!mem.empty()) {
      scatter(stats.rstd.data(), rstd, rows_order);
      if (centered_) scatter(stats.mean.data(), mean, rows_order), scatter(stats.mean_lo.data(), mean_lo, rows_order);
    }
    return stats;
  }

  template <class Exec, class X, class DY, class DX>
  NormGrads<P> backward_on(const Exec& exec, const X& x, const DY& dy, const NormStats<T>& stats, DX& dx) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && std::is_same_v<scalar_t<DY>, T> && std::is_same_v<scalar_t<DX>, T>,
                  "normkit: x, dy and dx must hold T");
    static_assert(rank_v<X> == rank_v<DY> && rank_v<X> == rank_v<DX>, "normkit: x, dy and dx must have the same rank");
    const std::string where = name_ + "::backward";
    const core::GroupShape s = shape_of(where, x);
    check_same_dims(where, "dy", dy, "x", x);
    check_same_dims(where, "dx", dx, "x", x);
    check_params(where);
    const Index rows = s.groups;
    check_size(where, "stats.rstd", rows, stats.rstd.size());
    if (!centered_ && stats.mean.size() != 0)
      throw_shape(where, "stats.mean has dimensions [" + std::to_string(stats.mean.size()) + "] but " + name_ +
                             " has no mean (expected [0]): were these stats made by a LayerNorm?");
    if (centered_ && stats.mean.size() == 0 && rows != 0)
      throw_shape(where, "stats.mean has dimensions [0] but [" + std::to_string(rows) + "] was expected: " + name_ +
                             " needs the row means (were these stats made by an RMSNorm?)");
    check_size(where, "stats.mean", centered_ ? rows : 0, stats.mean.size());
    if (stats.mean_lo.size() != 0) check_size(where, "stats.mean_lo", rows, stats.mean_lo.size());

    const std::vector<Index> rows_order = stats_order(x), params_order = param_order<X>();
    std::vector<A> mem(rows_order.empty() ? 0 : std::size_t(3 * rows));  // stats gathered into memory order
    const auto stat = [&](const Eigen::Tensor<A, 1>& t, Index slot) -> const A* {
      if (t.size() == 0) return nullptr;
      if (rows_order.empty()) return t.data();
      gather(mem.data() + slot * rows, t.data(), rows_order);
      return mem.data() + slot * rows;
    };
    const A* mean = stat(stats.mean, 0);
    const A* mean_lo = stat(stats.mean_lo, 1);
    const A* rstd = stat(stats.rstd, 2);
    std::vector<P> w_copy;
    const P* w = param(weight_, params_order, w_copy);

    NormGrads<P> grads;
    if (weight_.size()) grads.weight.resize(features_);
    if (bias_.size()) grads.bias.resize(features_);
    std::vector<P> dw_mem(params_order.empty() ? 0 : std::size_t(grads.weight.size())),
        db_mem(params_order.empty() ? 0 : std::size_t(grads.bias.size()));
    P* dw = grads.weight.size() ? (dw_mem.empty() ? grads.weight.data() : dw_mem.data()) : nullptr;
    P* db = grads.bias.size() ? (db_mem.empty() ? grads.bias.data() : db_mem.data()) : nullptr;

    Eigen::Tensor<T, rank_v<X>, layout_v<X>> dy_copy;
    const T* dyp = in_layout<layout_v<X>>(dy, dy_copy);
    OutputIn<layout_v<X>, DX> out(dx);
    core::backward_groups<A>(exec, x.data(), dyp, out.data(), s, params(w, nullptr),
                             core::StatsArrays<const A>{mean, mean_lo, rstd}, core::StatsOrigin::Batch, dw, db);
    out.commit();
    if (!dw_mem.empty()) scatter(grads.weight.data(), dw, params_order);
    if (!db_mem.empty()) scatter(grads.bias.data(), db, params_order);
    return grads;
  }

  std::string name_;
  std::vector<Index> shape_;
  Index features_ = 0;
  Index weight_size_ = 0, bias_size_ = 0;  // what weight_ and bias_ must keep: features_ or 0 (absent)
  double eps_;
  bool eps_inside_, centered_;
  Eigen::Tensor<P, 1> weight_, bias_;
};

}  // namespace normkit::detail
