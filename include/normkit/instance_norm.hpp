// normkit/instance_norm.hpp — InstanceNorm<T, P = T>: per-sample, per-channel normalization over the
// spatial axes (Ulyanov et al., 2016), with PyTorch's semantics (torch.nn.InstanceNorm1d/2d/3d).
//
// x is (N, C, spatial...) with C on channel_axis (1; or -1, channels-last), rank >= 3. For every
// sample n and channel c, over the S spatial values of (n, c):
//     training, or track_running_stats = false:  mean, var = the instance's (var biased)
//     eval with tracking:                        mean, var = running_mean[c], running_var[c]
//     xhat = (x - mean) / sqrt(var + eps),   y = xhat * weight[c] + bias[c]   (affine; off by default)
// Training with tracking also updates, with m = momentum (or 1/num_batches_tracked when nullopt):
//     running_mean = (1 - m) running_mean + m avg_n(mean),  running_var = (1 - m) running_var + m avg_n(var S/(S-1))
// (the batch average of the per-instance statistics, as PyTorch). Statistics always have N * C
// entries, ordered n * C + c (in eval with tracking: the channel's running values for every n).
// backward with instance statistics: dx = weight rstd (dy - mean(dy) - xhat mean(dy xhat)) per
// instance; with running statistics (stats.source Running): dx = dy weight rstd. dweight = sum dy
// xhat, dbias = sum dy per channel. eps is always inside the sqrt.
// GroupNorm's map (group_norm.hpp) with one channel per group; the parameters, modes, running
// statistics and state are BatchNorm's (detail::BatchNormBase), without folding.
// Types: as GroupNorm (T float, double, bfloat16, half; P = T or float beside the 16-bit types).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "batch_norm.hpp"
#include "group_norm.hpp"

namespace normkit {

struct InstanceNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // running = (1 - m) * running + m * batch; nullopt = cumulative average
  bool affine = false;
  bool track_running_stats = false;
  Eigen::Index channel_axis = 1;  // (N, C, spatial...) as PyTorch; -1 = last axis (channels-last)
};

template <class T, class P = T>
class InstanceNorm : private detail::BatchNormBase<T, P>, public detail::CallingForms<InstanceNorm<T, P>, T, P> {
  friend detail::CallingForms<InstanceNorm<T, P>, T, P>;
  using Base = detail::BatchNormBase<T, P>;
  using A = accum_t<T>;
  using Index = Eigen::Index;

  static BatchNormOptions as_batch_norm(const InstanceNormOptions& o) {
    return BatchNormOptions{o.eps, o.momentum, o.affine, o.track_running_stats, o.channel_axis};
  }

 public:
  explicit InstanceNorm(Index num_features, InstanceNormOptions options = {})
      : Base("InstanceNorm", num_features, as_batch_norm(options)), instance_options_(options) {}

  using Base::bias;
  using Base::eval;
  using Base::load_state_dict;
  using Base::num_batches_tracked;
  using Base::running_mean;
  using Base::running_var;
  using Base::set_bias;
  using Base::set_num_batches_tracked;
  using Base::set_running_mean;
  using Base::set_running_var;
  using Base::set_weight;
  using Base::state_dict;
  using Base::train;
  using Base::training;
  using Base::weight;
  const InstanceNormOptions& options() const { return instance_options_; }
  Index num_features() const { return this->channels_; }

 private:
  template <class Exec, class X, class Y>
  NormStats<T> forward_on(const Exec& exec, const X& x, Y& y) {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<Y>, T>,
                  "normkit: x and y must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<Y>, "normkit: x and y must have the same rank");
    const std::string where = "InstanceNorm::forward";
    const Index C = this->channels_;
    const detail::GroupedMap m = detail::grouped_map(where, "InstanceNorm", x, C, C, this->options_.channel_axis, 3);
    detail::check_same_dims(where, "y", y, "x", x);
    this->check_params(where);
    const Index S = m.shape.group_size(), N = m.stats_size() / C;
    const bool batch = this->uses_batch_stats();
    if (batch && S == 1)
      detail::throw_invalid(where,
                            "expected more than 1 spatial element when using instance statistics (training, "
                            "or track_running_stats = false), got x of dimensions " +
                                detail::dims_string(detail::dims_of(x)));

    NormStats<T> stats;
    stats.source = batch ? StatsSource::Batch : StatsSource::Running;
    const Index n = m.stats_size();
    stats.mean.resize(n), stats.mean_lo.resize(n), stats.rstd.resize(n);
    const bool update = this->training_ && this->options_.track_running_stats && N > 0 && S > 0;
    Eigen::Tensor<A, 1> var(update ? n : 0);
    if (!batch) {  // eval with running statistics: the channel's for every sample
      stats.mean_lo.setZero();
      for (Index c = 0; c < C; ++c) {
        const A mean = static_cast<A>(this->running_mean_(c));
        const A rstd = core::rstd_from_var<A>(static_cast<long double>(static_cast<A>(this->running_var_(c))),
                                              this->options_.eps, /*eps_inside_sqrt=*/true);
        for (Index k = 0; k < N; ++k) stats.mean(k * C + c) = mean, stats.rstd(k * C + c) = rstd;
      }
    }
    detail::RowMajorCopy<X> x_copy;
    const T* xp = detail::in_layout<Eigen::RowMajor>(x, x_copy);
    detail::OutputIn<Eigen::RowMajor, Y> out(y);
    const detail::GroupedCore<T, P> core(this->weight_, this->bias_, C, C, this->options_.eps);
    core.forward(exec, m, xp, out.data(),
                 core::StatsArrays<A>{stats.mean.data(), stats.mean_lo.data(), stats.rstd.data(),
                                      update ? var.data() : nullptr},
                 batch ? core::StatsMode::Compute : core::StatsMode::Given);
    out.commit();
    if (update) update_running_stats(stats, var, N, S);
    return stats;
  }

  // The batch average of the per-instance mean and biased var per channel (in double, samples in
  // order), then BatchNorm's update with n = S: var * S/(S-1) is the average of the unbiased ones.
  void update_running_stats(const NormStats<T>& stats, const Eigen::Tensor<A, 1>& var, Index N, Index S) {
    const Index C = this->channels_;
    NormStats<T> avg;
    avg.mean.resize(C), avg.mean_lo.resize(C);
    Eigen::Tensor<A, 1> avg_var(C);
    for (Index c = 0; c < C; ++c) {
      double mean = 0, v = 0;
      for (Index k = 0; k < N; ++k) {
        mean += static_cast<double>(stats.mean(k * C + c)) + static_cast<double>(stats.mean_lo(k * C + c));
        v += static_cast<double>(var(k * C + c));
      }
      mean /= static_cast<double>(N), v /= static_cast<double>(N);
      avg.mean(c) = static_cast<A>(mean);
      avg.mean_lo(c) = static_cast<A>(mean - static_cast<double>(avg.mean(c)));
      avg_var(c) = static_cast<A>(v);
    }
    Base::update_running_stats(avg, avg_var, S);
  }

  template <class Exec, class X, class DY, class DX>
  NormGrads<P> backward_on(const Exec& exec, const X& x, const DY& dy, const NormStats<T>& stats, DX& dx) const {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<DY>, T> &&
                      std::is_same_v<detail::scalar_t<DX>, T>,
                  "normkit: x, dy and dx must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<DY> && detail::rank_v<X> == detail::rank_v<DX>,
                  "normkit: x, dy and dx must have the same rank");
    const std::string where = "InstanceNorm::backward";
    const Index C = this->channels_;
    const detail::GroupedMap m = detail::grouped_map(where, "InstanceNorm", x, C, C, this->options_.channel_axis, 3);
    detail::check_same_dims(where, "dy", dy, "x", x);
    detail::check_same_dims(where, "dx", dx, "x", x);
    this->check_params(where);
    detail::check_grouped_stats(where, stats, m.stats_size());

    NormGrads<P> grads;
    if (this->options_.affine) grads.weight.resize(C), grads.bias.resize(C);
    detail::RowMajorCopy<X> x_copy;
    detail::RowMajorCopy<DY> dy_copy;
    const T* xp = detail::in_layout<Eigen::RowMajor>(x, x_copy);
    const T* dyp = detail::in_layout<Eigen::RowMajor>(dy, dy_copy);
    detail::OutputIn<Eigen::RowMajor, DX> out(dx);
    const detail::GroupedCore<T, P> core(this->weight_, this->bias_, C, C, this->options_.eps);
    core.backward(exec, m, xp, dyp, out.data(),
                  core::StatsArrays<const A>{stats.mean.data(), stats.mean_lo.size() ? stats.mean_lo.data() : nullptr,
                                             stats.rstd.data()},
                  stats.source == StatsSource::Running ? core::StatsOrigin::Constant : core::StatsOrigin::Batch,
                  this->options_.affine ? grads.weight.data() : nullptr,
                  this->options_.affine ? grads.bias.data() : nullptr);
    out.commit();
    return grads;
  }

  InstanceNormOptions instance_options_;
};

}  // namespace normkit
