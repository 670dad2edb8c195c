// normkit/trailing_norm.hpp — what LayerNorm and RMSNorm share: normalization over the trailing
// `normalized_shape` axes of a tensor, one group per index of the leading axes.
//
// The two differ only in `centered` (LayerNorm subtracts the mean, RMSNorm does not) and in their
// option defaults; see layer_norm.hpp and rms_norm.hpp for the formulas. This class maps a tensor
// onto the core (tensor_view.hpp), checks shapes before anything is written, and reorders stats and
// parameters between the contract's row-major order and a ColMajor tensor's memory order.
// T stores x, y, dy, dx; P stores weight, bias and their gradients (options.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "calling_forms.hpp"
#include "core/groups.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "state.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit::detail {

template <class T, class P>
class TrailingNorm : public CallingForms<TrailingNorm<T, P>, T, P> {
  friend CallingForms<TrailingNorm<T, P>, T, P>;
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(is_param_type_v<T, P>,
                "normkit: the parameter type P must be T or accum_t<T> (float beside bfloat16/half)");
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

  // Residual add + norm (a transformer block's x + sublayer(x) before the next norm): h = x + alpha *
  // residual, computed in accum_t<T> and rounded once to T, is written to h, and y = norm(h), in the
  // passes of forward (h is never read back from memory before y is written). Same y and stats, bit
  // for bit, as forward(h, y). h may share storage with x or with residual, y with x.
  template <class X, class R, class H, class Y>
  NormStats<T> forward_add(const X& x, const R& residual, H&& h, Y&& y, double alpha = 1) const {
    return forward_add_on(core::SerialExecutor{}, x, residual, h, y, alpha);
  }
  template <class X, class R, class H, class Y>
  NormStats<T> forward_add(const Eigen::ThreadPoolDevice& device, const X& x, const R& residual, H&& h, Y&& y,
                           double alpha = 1) const {
    return forward_add_on(PoolExecutor{device}, x, residual, h, y, alpha);
  }
  // Backward of forward_add: dx = (backward of the norm at h, for dy) + dh, dh being the gradient
  // that reaches h from its other uses (size 0: none), added in accum_t<T> and rounded once. The
  // residual's gradient is alpha * dx (the caller scales it). dx may share storage with dy or dh.
  template <class H, class DY, class DH, class DX>
  NormGrads<P> backward_add(const H& h, const DY& dy, const DH& dh, const NormStats<T>& stats, DX&& dx) const {
    return backward_add_on(core::SerialExecutor{}, h, dy, dh, stats, dx);
  }
  template <class H, class DY, class DH, class DX>
  NormGrads<P> backward_add(const Eigen::ThreadPoolDevice& device, const H& h, const DY& dy, const DH& dh,
                            const NormStats<T>& stats, DX&& dx) const {
    return backward_add_on(PoolExecutor{device}, h, dy, dh, stats, dx);
  }

 protected:
  TrailingNorm(std::string name, std::vector<Index> normalized_shape, double eps, bool affine, bool bias,
               EpsPlacement placement, bool centered, double weight_offset)
      : name_(std::move(name)), shape_(std::move(normalized_shape)), eps_(eps), weight_offset_(weight_offset),
        eps_inside_(placement == EpsPlacement::InsideSqrt), centered_(centered) {
    check_eps(name_, eps_);
    if (!std::isfinite(weight_offset_))
      throw_invalid(name_, "weight_offset must be a finite number, got " + number_string(weight_offset_));
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
                             ") but normalized_shape " + dims_string(shape_, k) +
                             " needs rank >= " + std::to_string(k));
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

  template <class Q>
  core::NormParams<Q> params(const Q* w, const Q* b) const {
    core::NormParams<Q> p;
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
    OutputIn<layout_v<X>, Y> out(y);
    NormStats<T> stats = normalize<X>(exec, s, x, core::LoadX<T>{x.data()}, out.data());
    out.commit();
    return stats;
  }

  template <class Exec, class X, class R, class H, class Y>
  NormStats<T> forward_add_on(const Exec& exec, const X& x, const R& residual, H& h, Y& y, double alpha) const {
    static_assert(std::is_same_v<scalar_t<X>, T> && std::is_same_v<scalar_t<R>, T> && std::is_same_v<scalar_t<H>, T> &&
                      std::is_same_v<scalar_t<Y>, T>,
                  "normkit: x, residual, h and y must hold T");
    static_assert(rank_v<X> == rank_v<R> && rank_v<X> == rank_v<H> && rank_v<X> == rank_v<Y>,
                  "normkit: x, residual, h and y must have the same rank");
    const std::string where = name_ + "::forward_add";
    const core::GroupShape s = shape_of(where, x);
    check_same_dims(where, "residual", residual, "x", x);
    check_same_dims(where, "h", h, "x", x);
    check_same_dims(where, "y", y, "x", x);
    check_params(where);
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> r_copy;
    const T* r = in_layout<layout_v<X>>(residual, r_copy);
    OutputIn<layout_v<X>, H> out_h(h);
    OutputIn<layout_v<X>, Y> out_y(y);
    const core::ResidualSum<A, T> sum{x.data(), r, static_cast<A>(alpha), out_h.data()};
    NormStats<T> stats = normalize<X>(exec, s, x, core::LoadResidual<A, T>{&sum}, out_y.data());
    out_h.commit();
    out_y.commit();
    return stats;
  }

  // The statistics of every row of x (read through `load`) and y, the normalized rows.
  template <class X, class Exec, class Load>
  NormStats<T> normalize(const Exec& exec, const core::GroupShape& s, const X& x, const Load& load, T* y) const {
    const Index rows = s.groups;
    NormStats<T> stats;
    stats.rstd.resize(rows);
    if (centered_) stats.mean.resize(rows), stats.mean_lo.resize(rows);
    const std::vector<Index> rows_order = stats_order(x);
    std::vector<A> mem(rows_order.empty() ? 0 : std::size_t(3 * rows));  // stats in memory order, scattered below
    A* mean = centered_ ? (mem.empty() ? stats.mean.data() : mem.data()) : nullptr;
    A* mean_lo = centered_ ? (mem.empty() ? stats.mean_lo.data() : mem.data() + rows) : nullptr;
    A* rstd = mem.empty() ? stats.rstd.data() : mem.data() + 2 * rows;
    const core::StatsArrays<A> st{mean, mean_lo, rstd};
    // RowMajor: the sweep loads w and b beside its stores of y (and of h) along each row.
    const bool rows_sweep = layout_v<X> == Eigen::RowMajor;
    const Index row_bytes = s.inner * Index(sizeof(T));
    with_params<X>(
        [&](const auto* w, const auto* b, auto*, auto*) {
      core::forward_groups<A>(exec, load, core::StoreY<T>{y}, s, params(w, b), st, core::StatsMode::Compute);
        },
        nullptr,
        {core::OutputRows{rows_sweep ? y : nullptr, row_bytes},
         core::OutputRows{rows_sweep ? load.kept(0) : nullptr, row_bytes}});
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
    check_stats(where, s, stats);
    Eigen::Tensor<T, rank_v<X>, layout_v<X>> dy_copy;
    const T* dyp = in_layout<layout_v<X>>(dy, dy_copy);
    OutputIn<layout_v<X>, DX> out(dx);
    NormGrads<P> grads = gradients(exec, s, x, dyp, stats, core::StoreY<T>{out.data()});
    out.commit();
    return grads;
  }

  template <class Exec, class H, class DY, class DH, class DX>
  NormGrads<P> backward_add_on(const Exec& exec, const H& h, const DY& dy, const DH& dh, const NormStats<T>& stats,
                               DX& dx) const {
    static_assert(std::is_same_v<scalar_t<H>, T> && std::is_same_v<scalar_t<DY>, T> &&
                      std::is_same_v<scalar_t<DH>, T> && std::is_same_v<scalar_t<DX>, T>,
                  "normkit: h, dy, dh and dx must hold T");
    static_assert(rank_v<H> == rank_v<DY> && rank_v<H> == rank_v<DH> && rank_v<H> == rank_v<DX>,
                  "normkit: h, dy, dh and dx must have the same rank");
    const std::string where = name_ + "::backward_add";
    const core::GroupShape s = shape_of(where, h);
    check_same_dims(where, "dy", dy, "h", h);
    if (dh.size() != 0) check_same_dims(where, "dh", dh, "h", h);
    check_same_dims(where, "dx", dx, "h", h);
    check_params(where);
    check_stats(where, s, stats);
    Eigen::Tensor<T, rank_v<H>, layout_v<H>> dy_copy, dh_copy;
    const T* dyp = in_layout<layout_v<H>>(dy, dy_copy);
    OutputIn<layout_v<H>, DX> out(dx);
    NormGrads<P> grads;
    if (dh.size() == 0) {
      grads = gradients(exec, s, h, dyp, stats, core::StoreY<T>{out.data()});
    } else {
      const T* dhp = in_layout<layout_v<H>>(dh, dh_copy);
      grads = gradients(exec, s, h, dyp, stats, core::StoreAdd<T>{out.data(), dhp});
    }
    out.commit();
    return grads;
  }

  void check_stats(const std::string& where, const core::GroupShape& s, const NormStats<T>& stats) const {
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
  }

  // dx (written through `store`) and the parameter gradients, for checked arguments.
  template <class Exec, class X, class Store>
  NormGrads<P> gradients(const Exec& exec, const core::GroupShape& s, const X& x, const T* dy,
                         const NormStats<T>& stats, const Store& store) const {
    const Index rows = s.groups;
    const std::vector<Index> rows_order = stats_order(x);
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
    const core::StatsArrays<const A> st{mean, mean_lo, rstd};
    NormGrads<P> grads;
    if (weight_.size()) grads.weight.resize(features_);
    if (bias_.size()) grads.bias.resize(features_);
    with_params<X>(
        [&](const auto* w, const auto*, auto* dw, auto* db) {
      using Q = std::remove_const_t<std::remove_pointer_t<decltype(w)>>;
      core::backward_groups<A>(exec, x.data(), dy, store, s, params<Q>(w, nullptr), st, core::StatsOrigin::Batch, dw,
                               db);
        },
        &grads);
    return grads;
  }

  // Calls f(w, b, dw, db) with the parameters as the core reads them — in x's memory order (a
  // ColMajor tensor with several normalized axes gathers them), and with a weight offset as accum_t
  // weights offset + weight (the sum is never rounded to P) — and buffers for their gradients, which
  // then go to `grads` in the contract's order.
  // outs: the rows a forward sweep stores while it loads w and b (RowMajor: at their rate, where
  // Q and T have one size). Parameters placed where those loads would wait on the stores are
  // copied to where they do not (core/fusion.hpp: untrailed_offset).
  template <class X, class F>
  void with_params(F&& f, NormGrads<P>* grads = nullptr, std::initializer_list<core::OutputRows> outs = {}) const {
    const std::vector<Index> order = param_order<X>();
    if (weight_offset_ != 0 && weight_.size()) run_with_params<A>(order, /*offset=*/true, f, grads, outs);
    else run_with_params<P>(order, /*offset=*/false, f, grads, outs);
  }
  template <class Q, class F>
  void run_with_params(const std::vector<Index>& order, bool offset, F& f, NormGrads<P>* grads,
                       std::initializer_list<core::OutputRows> outs) const {
    const bool direct = std::is_same_v<Q, P> && order.empty();  // the tensors' own buffers serve as they are
    const bool same_rate = sizeof(Q) == sizeof(T) && order.empty() && outs.size() > 0;
    const auto trails = [&](const Eigen::Tensor<P, 1>& t) { return same_rate && core::trails_outputs(t.data(), outs); };
    const std::intptr_t place = trails(weight_) || trails(bias_) ? core::untrailed_offset(outs) : -1;
    const auto input = [&](const Eigen::Tensor<P, 1>& t, bool add_offset, std::vector<Q>& buf) -> const Q* {
      if (t.size() == 0) return nullptr;
      if constexpr (std::is_same_v<Q, P>)
        if (direct && !add_offset && place < 0) return t.data();
      Q* copy = placed(buf, place);
      for (Index j = 0; j < features_; ++j) {
        const A v = static_cast<A>(t.data()[order.empty() ? j : order[std::size_t(j)]]);
        copy[j] = static_cast<Q>(add_offset ? static_cast<A>(weight_offset_) + v : v);
      }
      return copy;
    };
    std::vector<Q> w_buf, b_buf, dw_buf, db_buf;
    const Q* w = input(weight_, offset, w_buf);
    const Q* b = input(bias_, /*add_offset=*/false, b_buf);
    const auto output = [&](Eigen::Tensor<P, 1>* t, std::vector<Q>& buf) -> Q* {
      if (!t || t->size() == 0) return nullptr;
      if constexpr (std::is_same_v<Q, P>)
        if (direct) return t->data();
      buf.resize(std::size_t(features_));
      return buf.data();
    };
    Q* dw = output(grads ? &grads->weight : nullptr, dw_buf);
    Q* db = output(grads ? &grads->bias : nullptr, db_buf);
    f(w, b, dw, db);
    const auto put = [&](Eigen::Tensor<P, 1>& t, const std::vector<Q>& buf) {
      if (buf.empty()) return;
      if (order.empty()) std::transform(buf.begin(), buf.end(), t.data(), [](Q v) { return static_cast<P>(v); });
      else scatter(t.data(), buf.data(), order);
    };
    if (grads) put(grads->weight, dw_buf), put(grads->bias, db_buf);
  }
  // features_ values in buf, starting at page offset `place` (none: -1, at buf's start).
  template <class Q>
  Q* placed(std::vector<Q>& buf, std::intptr_t place) const {
    const std::size_t room = place < 0 ? 0 : core::tuning::kAliasBytes / sizeof(Q);
    buf.resize(std::size_t(features_) + room);
    if (place < 0) return buf.data();
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(buf.data());
    const std::uintptr_t skip = (std::uintptr_t(place) - at) % core::tuning::kAliasBytes;  // a multiple of sizeof(Q)
    return buf.data() + skip / sizeof(Q);
  }

  std::string name_;
  std::vector<Index> shape_;
  Index features_ = 0;
  Index weight_size_ = 0, bias_size_ = 0;  // what weight_ and bias_ must keep: features_ or 0 (absent)
  double eps_, weight_offset_;
  bool eps_inside_, centered_;
  Eigen::Tensor<P, 1> weight_, bias_;
};

}  // namespace normkit::detail
