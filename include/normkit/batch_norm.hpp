// normkit/batch_norm.hpp — BatchNorm<T, P = T>: per-channel normalization over the batch and spatial axes
// (Ioffe & Szegedy, 2015), with PyTorch's semantics (torch.nn.BatchNorm1d/2d/3d).
//
// For every channel c, over the n = N * (spatial size) values of that channel:
//     training, or track_running_stats = false:  mean, var = the batch's (var biased)
//     eval with tracking:                        mean, var = running_mean, running_var
//     xhat = (x - mean) / sqrt(var + eps),   y = xhat * weight[c] + bias[c]
// Training also updates, when tracking, with m = momentum (or 1/num_batches_tracked when nullopt):
//     running_mean = (1 - m) running_mean + m mean,   running_var = (1 - m) running_var + m var n/(n-1)
// backward with batch statistics: dx = weight rstd (dy - mean(dy) - xhat mean(dy xhat));
// with running statistics: dx = dy weight rstd. dweight = sum dy xhat, dbias = sum dy. Which of
// the two follows stats.source (what the forward used), not the current mode: forward in training,
// eval(), then backward still gives the batch gradient, as autograd does.
// channel_axis 1 is PyTorch's (N, C, ...); -1 (or R-1) is channels-last. eps is always inside the sqrt.
// Inference: folded() gives the eval forward as one per-channel map y = scale[c] x + shift[c]
// (ChannelAffine), and fold_into(weight, bias, out_axis) merges it into the preceding linear or
// convolution layer's parameters, in place (see both members).
// Types: T (x, y, dy, dx) is float, double, Eigen::bfloat16 or Eigen::half; statistics are
// accumulated and saved in accum_t<T> (float for the 16-bit types); P (weight, bias, running
// statistics, gradients) is T or, for mixed precision, float beside bfloat16/half.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "calling_forms.hpp"
#include "core/groups.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "state.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit {

// A BatchNorm in eval mode folded into one per-channel affine map: y = scale[c] * x + shift[c]
// (BatchNorm::folded()).
template <class P>
struct ChannelAffine {
  Eigen::Tensor<P, 1> scale, shift;
};

namespace detail {

// A parameter value in long double and back, rounded once (through float for the 16-bit types,
// which convert from float only).
template <class P>
long double to_long_double(P v) {
  return static_cast<long double>(static_cast<accum_t<P>>(v));
}
template <class P>
P round_to(long double v) {
  if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>) return static_cast<P>(v);
  else return static_cast<P>(static_cast<float>(v));
}

// Everything of a BatchNorm but its public forward/backward: parameters, modes, state, the checks,
// the running-statistics update and the local forward/backward. BatchNorm and SyncBatchNorm
// (mpi.hpp) are this plus their own forward/backward; `name` heads their error messages.
template <class T, class P>
class BatchNormBase {
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(is_param_type_v<T, P>,
                "normkit: the parameter type P must be T or accum_t<T> (float beside bfloat16/half)");
  using A = accum_t<T>;
  using Index = Eigen::Index;

 public:
  BatchNormBase(const char* name, Index num_features, BatchNormOptions options)
      : name_(name), options_(options), channels_(num_features) {
    if (num_features < 1)
      detail::throw_invalid(name_, "num_features must be >= 1, got " + std::to_string(num_features));
    detail::check_eps(name_, options_.eps);
    if (options_.momentum && !(*options_.momentum >= 0 && *options_.momentum <= 1))
      detail::throw_invalid(name_,
                            "momentum must be in [0, 1] or nullopt, got " + detail::number_string(*options_.momentum));
    if (options_.affine) {
      weight_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(1));
      bias_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(0));
    }
    if (options_.track_running_stats) {
      running_mean_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(0));
      running_var_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(1));
    }
  }

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }
  const BatchNormOptions& options() const { return options_; }

  Eigen::Tensor<P, 1>& weight() { return weight_; }
  const Eigen::Tensor<P, 1>& weight() const { return weight_; }
  Eigen::Tensor<P, 1>& bias() { return bias_; }
  const Eigen::Tensor<P, 1>& bias() const { return bias_; }
  Eigen::Tensor<P, 1>& running_mean() { return running_mean_; }
  const Eigen::Tensor<P, 1>& running_mean() const { return running_mean_; }
  Eigen::Tensor<P, 1>& running_var() { return running_var_; }
  const Eigen::Tensor<P, 1>& running_var() const { return running_var_; }
  std::int64_t num_batches_tracked() const { return num_batches_tracked_; }

  // State in PyTorch's names (state.hpp): "weight", "bias" (affine), "running_mean", "running_var"
  // and num_batches_tracked (tracking).
  StateDict<P> state_dict() const {
    const bool tracked = options_.track_running_stats;
    return detail::state_of<P>(slots_of(*this),
                               tracked ? std::optional<std::int64_t>(num_batches_tracked_) : std::nullopt);
  }
  void load_state_dict(const StateDict<P>& state, bool strict = true) {
    std::int64_t* counter = options_.track_running_stats ? &num_batches_tracked_ : nullptr;
    detail::load_state(std::string(name_) + "::load_state_dict", slots_of(*this), state, counter, strict);
  }
  void set_weight(const P* data, Index size) { set(0, "set_weight", data, size); }
  void set_weight(const std::vector<P>& v) { set_weight(v.data(), static_cast<Index>(v.size())); }
  void set_bias(const P* data, Index size) { set(1, "set_bias", data, size); }
  void set_bias(const std::vector<P>& v) { set_bias(v.data(), static_cast<Index>(v.size())); }
  void set_running_mean(const P* data, Index size) { set(2, "set_running_mean", data, size); }
  void set_running_mean(const std::vector<P>& v) { set_running_mean(v.data(), static_cast<Index>(v.size())); }
  void set_running_var(const P* data, Index size) { set(3, "set_running_var", data, size); }
  void set_running_var(const std::vector<P>& v) { set_running_var(v.data(), static_cast<Index>(v.size())); }
  void set_num_batches_tracked(std::int64_t count) {
    const std::string where = std::string(name_) + "::set_num_batches_tracked";
    if (!options_.track_running_stats)
      detail::throw_invalid(where, "this " + std::string(name_) + " does not track running statistics");
    if (count < 0) detail::throw_invalid(where, "count must be >= 0, got " + std::to_string(count));
    num_batches_tracked_ = count;
  }

  // Inference folding, from the running statistics (whatever the mode; needs track_running_stats,
  // else std::logic_error). Per channel, in long double and rounded once to P:
  //     scale = weight / sqrt(running_var + eps),   shift = bias - running_mean * scale
  // (weight 1 and bias 0 without affine), so that scale * x + shift is this BatchNorm's eval forward.
  ChannelAffine<P> folded() const {
    const std::string where = std::string(name_) + "::folded";
    check_foldable(where);
    const std::vector<long double> scale = fold_scale();
    ChannelAffine<P> out;
    out.scale.resize(channels_), out.shift.resize(channels_);
    for (Index c = 0; c < channels_; ++c) {
      const std::size_t i = static_cast<std::size_t>(c);
      out.scale(c) = detail::round_to<P>(scale[i]);
      out.shift(c) = detail::round_to<P>(bn_bias(c) - detail::to_long_double(running_mean_(c)) * scale[i]);
    }
    return out;
  }

  // Folds this BatchNorm (eval mode, running statistics) into the linear or convolution layer before
  // it, in place. `layer_weight` is an Eigen::Tensor or TensorMap of P of any rank and layout whose
  // axis out_axis (in [0, rank)) holds the C output channels (0 for a Linear's (out, in) or a
  // convolution's OIHW weight); `layer_bias` holds C values of P (zeros for a layer without bias):
  //     layer_weight' = layer_weight * scale[c] along out_axis
  //     layer_bias'[c] = (layer_bias[c] - running_mean[c]) * scale[c] + bias[c]
  // with scale as in folded(), each value computed in long double and rounded once to P. Throws
  // std::logic_error without tracking, std::invalid_argument for an out_axis outside [0, rank),
  // shape_error for an out_axis extent or a bias size other than C; nothing is written then.
  template <class W, class B>
  void fold_into(W&& layer_weight, B&& layer_bias, Index out_axis = 0) const {
    using WT = std::remove_reference_t<W>;
    using BT = std::remove_reference_t<B>;
    static_assert(std::is_same_v<detail::scalar_t<WT>, P> && std::is_same_v<detail::scalar_t<BT>, P>,
                  "normkit: fold_into's weight and bias must hold P, the BatchNorm's parameter type");
    static_assert(detail::rank_v<WT> >= 1, "normkit: fold_into's weight must have rank >= 1");
    static_assert(detail::rank_v<BT> == 1, "normkit: fold_into's bias must be a rank-1 tensor of C values");
    static_assert(detail::writable<WT>::value && detail::writable<BT>::value,
                  "normkit: fold_into writes weight and bias in place: pass an Eigen::Tensor or an "
                  "Eigen::TensorMap over non-const data");
    constexpr Index rank = detail::rank_v<WT>;
    const std::string where = std::string(name_) + "::fold_into";
    check_foldable(where);
    const auto dims = detail::dims_of(layer_weight);
    if (out_axis < 0 || out_axis >= rank)
      detail::throw_invalid(where, "out_axis " + std::to_string(out_axis) + " is out of range [0, " +
                                       std::to_string(rank) + ") for weight of dimensions " +
                                       detail::dims_string(dims) + " (rank " + std::to_string(rank) + ")");
    const std::size_t axis = static_cast<std::size_t>(out_axis);
    if (dims[axis] != channels_)
      detail::throw_shape(where, "weight has dimensions " + detail::dims_string(dims) + " with " +
                                     std::to_string(dims[axis]) + " output channels on out_axis " +
                                     std::to_string(out_axis) + " but num_features is " + std::to_string(channels_) +
                                     " (expected [" + std::to_string(channels_) + "] there)");
    detail::check_size(where, "bias", channels_, static_cast<Index>(layer_bias.size()));

    const std::vector<long double> scale = fold_scale();
    // Memory order: [outer][C][inner], inner = the product of the dims that vary faster than out_axis.
    Index inner = 1, outer = 1;
    for (std::size_t a = 0; a < dims.size(); ++a) {
      const bool faster = detail::layout_v<WT> == Eigen::RowMajor ? a > axis : a < axis;
      if (faster) inner *= dims[a];
      else if (a != axis) outer *= dims[a];
    }
    P* w = layer_weight.data();
    for (Index o = 0; o < outer; ++o)
      for (Index c = 0; c < channels_; ++c) {
        P* row = w + (o * channels_ + c) * inner;
        const long double s = scale[static_cast<std::size_t>(c)];
        for (Index k = 0; k < inner; ++k) row[k] = detail::round_to<P>(detail::to_long_double(row[k]) * s);
      }
    P* b = layer_bias.data();
    for (Index c = 0; c < channels_; ++c)
      b[c] = detail::round_to<P>((detail::to_long_double(b[c]) - detail::to_long_double(running_mean_(c))) *
                                     scale[static_cast<std::size_t>(c)] +
                                 bn_bias(c));
  }

 protected:
  // folded() and fold_into() read the running statistics, which exist only with tracking.
  void check_foldable(const std::string& where) const {
    if (!options_.track_running_stats)
      throw std::logic_error("normkit::" + where + ": this " + std::string(name_) +
                             " was built with track_running_stats = false: it has no running statistics to fold");
    check_params(where);
  }
  // weight / sqrt(running_var + eps) per channel, unrounded (weight 1 without affine).
  std::vector<long double> fold_scale() const {
    std::vector<long double> scale(static_cast<std::size_t>(channels_));
    const long double eps = options_.eps;
    for (Index c = 0; c < channels_; ++c) {
      const long double w = options_.affine ? detail::to_long_double(weight_(c)) : 1.0L;
      scale[static_cast<std::size_t>(c)] = w / std::sqrt(detail::to_long_double(running_var_(c)) + eps);
    }
    return scale;
  }
  long double bn_bias(Index c) const { return options_.affine ? detail::to_long_double(bias_(c)) : 0.0L; }

  // Batch statistics are used in training, and in any mode without running statistics.
  bool uses_batch_stats() const { return training_ || !options_.track_running_stats; }

  template <class X>
  core::GroupShape shape_of(const std::string& where, const X& x) const {
    constexpr Index rank = detail::rank_v<X>;
    const auto dims = detail::dims_of(x);
    if (rank < 2)
      detail::throw_shape(where, "x has dimensions " + detail::dims_string(dims) + " (rank " + std::to_string(rank) +
                                     ") but " + std::string(name_) + " needs rank >= 2 (N, C, ...)");
    const Index axis = options_.channel_axis < 0 ? options_.channel_axis + rank : options_.channel_axis;
    if (axis < 0 || axis >= rank)
      detail::throw_invalid(where, "channel_axis " + std::to_string(options_.channel_axis) + " is out of range [" +
                                       std::to_string(-rank) + ", " + std::to_string(rank) + ") for x of rank " +
                                       std::to_string(rank));
    if (dims[std::size_t(axis)] != channels_)
      detail::throw_shape(where, "x has dimensions " + detail::dims_string(dims) + " with " +
                                     std::to_string(dims[std::size_t(axis)]) + " channels on axis " +
                                     std::to_string(axis) + " but num_features is " + std::to_string(channels_) +
                                     " (expected [" + std::to_string(channels_) + "] there)");
    return detail::channel_groups(dims.data(), rank, axis, detail::layout_v<X> == Eigen::RowMajor);
  }

  // The parameters with their names and required sizes (0: absent); const or not as `self` is.
  template <class Self>
  static auto slots_of(Self& self) {
    using Tensor = std::conditional_t<std::is_const_v<Self>, const Eigen::Tensor<P, 1>, Eigen::Tensor<P, 1>>;
    const Index affine = self.options_.affine ? self.channels_ : 0;
    const Index tracked = self.options_.track_running_stats ? self.channels_ : 0;
    return std::array<detail::ParamSlot<Tensor>, 4>{{{"weight", &self.weight_, affine},
                                                     {"bias", &self.bias_, affine},
                                                     {"running_mean", &self.running_mean_, tracked},
                                                     {"running_var", &self.running_var_, tracked}}};
  }
  void set(std::size_t slot, const char* setter, const P* data, Index size) {
    detail::set_param(std::string(name_) + "::" + setter, slots_of(*this)[slot], data, size);
  }

  // Every parameter keeps its constructed size (C, or 0 when absent), whatever the mode uses.
  void check_params(const std::string& where) const {
    for (const auto& slot : slots_of(*this)) detail::check_param(where, slot.name, slot.size, slot.tensor->size());
  }

  core::NormParams<P> params() const {
    core::NormParams<P> p;
    p.eps = options_.eps;
    p.affine_axis = core::AffineAxis::Group;
    p.weight = weight_.size() ? weight_.data() : nullptr;
    p.bias = bias_.size() ? bias_.data() : nullptr;
    return p;
  }

  // forward_on / backward_on: statistics of this process's batch. SyncBatchNorm's own hide them and
  // fall back to them where nothing is shared (eval; stats not synced).
  template <class Exec, class X, class Y>
  NormStats<T> forward_on(const Exec& exec, const X& x, Y& y) {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<Y>, T>,
                  "normkit: x and y must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<Y>, "normkit: x and y must have the same rank");
    const std::string where = std::string(name_) + "::forward";
    const core::GroupShape s = shape_of(where, x);
    detail::check_same_dims(where, "y", y, "x", x);
    check_params(where);
    const Index n = s.group_size();
    const bool batch = uses_batch_stats();
    if (batch && n == 1)
      detail::throw_invalid(where,
                            "expected more than 1 value per channel when using batch statistics, got x of dimensions " +
                                detail::dims_string(detail::dims_of(x)));

    NormStats<T> stats;
    stats.source = batch ? StatsSource::Batch : StatsSource::Running;
    stats.mean.resize(channels_), stats.mean_lo.resize(channels_), stats.rstd.resize(channels_);
    Eigen::Tensor<A, 1> var(channels_);
    if (!batch) {  // eval with running statistics
      stats.mean_lo.setZero();
      for (Index c = 0; c < channels_; ++c) {
        stats.mean(c) = static_cast<A>(running_mean_(c));
        stats.rstd(c) = core::rstd_from_var<A>(static_cast<long double>(static_cast<A>(running_var_(c))), options_.eps,
                                               true);
      }
    }
    detail::OutputIn<detail::layout_v<X>, Y> out(y);
    core::forward_groups<A>(exec, x.data(), out.data(), s, params(),
                            core::StatsArrays<A>{stats.mean.data(), stats.mean_lo.data(), stats.rstd.data(),
                                                 var.data()},
                            batch ? core::StatsMode::Compute : core::StatsMode::Given);
    out.commit();
    if (training_ && options_.track_running_stats && n > 0) update_running_stats(stats, var, n);
    return stats;
  }

  void update_running_stats(const NormStats<T>& stats, const Eigen::Tensor<A, 1>& var, Index n) {
    ++num_batches_tracked_;
    const double m = options_.momentum ? *options_.momentum : 1.0 / static_cast<double>(num_batches_tracked_);
    const double unbias = static_cast<double>(n) / static_cast<double>(n - 1);
    for (Index c = 0; c < channels_; ++c) {
      const double mean = static_cast<double>(stats.mean(c)) + static_cast<double>(stats.mean_lo(c));
      const double old_mean = static_cast<double>(static_cast<A>(running_mean_(c)));
      const double old_var = static_cast<double>(static_cast<A>(running_var_(c)));
      running_mean_(c) = static_cast<P>((1 - m) * old_mean + m * mean);
      running_var_(c) = static_cast<P>((1 - m) * old_var + m * static_cast<double>(var(c)) * unbias);
    }
  }

  template <class Exec, class X, class DY, class DX>
  NormGrads<P> backward_on(const Exec& exec, const X& x, const DY& dy, const NormStats<T>& stats, DX& dx) const {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<DY>, T> &&
                      std::is_same_v<detail::scalar_t<DX>, T>,
                  "normkit: x, dy and dx must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<DY> && detail::rank_v<X> == detail::rank_v<DX>,
                  "normkit: x, dy and dx must have the same rank");
    const std::string where = std::string(name_) + "::backward";
    const core::GroupShape s = shape_of(where, x);
    detail::check_same_dims(where, "dy", dy, "x", x);
    detail::check_same_dims(where, "dx", dx, "x", x);
    check_params(where);
    detail::check_size(where, "stats.mean", channels_, stats.mean.size());
    detail::check_size(where, "stats.rstd", channels_, stats.rstd.size());
    if (stats.mean_lo.size() != 0) detail::check_size(where, "stats.mean_lo", channels_, stats.mean_lo.size());

    NormGrads<P> grads;
    if (options_.affine) grads.weight.resize(channels_), grads.bias.resize(channels_);
    Eigen::Tensor<T, detail::rank_v<X>, detail::layout_v<X>> dy_copy;
    const T* dyp = detail::in_layout<detail::layout_v<X>>(dy, dy_copy);
    detail::OutputIn<detail::layout_v<X>, DX> out(dx);
    core::backward_groups<A>(
        exec, x.data(), dyp, out.data(), s, params(),
        core::StatsArrays<const A>{stats.mean.data(), stats.mean_lo.size() ? stats.mean_lo.data() : nullptr,
                                   stats.rstd.data()},
        stats.source == StatsSource::Running ? core::StatsOrigin::Constant : core::StatsOrigin::Batch,
        options_.affine ? grads.weight.data() : nullptr, options_.affine ? grads.bias.data() : nullptr);
    out.commit();
    return grads;
  }

  const char* name_;
  BatchNormOptions options_;
  Index channels_;
  bool training_ = true;
  Eigen::Tensor<P, 1> weight_, bias_, running_mean_, running_var_;
  std::int64_t num_batches_tracked_ = 0;
};

}  // namespace detail

template <class T, class P = T>
class BatchNorm : public detail::BatchNormBase<T, P>, public detail::CallingForms<BatchNorm<T, P>, T, P> {
  friend detail::CallingForms<BatchNorm<T, P>, T, P>;
  using Index = Eigen::Index;

 public:
  explicit BatchNorm(Index num_features, BatchNormOptions options = {})
      : detail::BatchNormBase<T, P>("BatchNorm", num_features, options) {}
};

}  // namespace normkit
