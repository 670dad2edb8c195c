// normkit/group_norm.hpp — GroupNorm<T, P = T>: per-sample normalization over groups of channels
// (Wu & He, 2018), with PyTorch's semantics (torch.nn.GroupNorm).
//
// x is (N, C, spatial...) with C on channel_axis (1; or -1, channels-last), rank >= 2. The C channels
// form G = num_groups groups of C/G consecutive channels; for every sample n and group g, over the
// C/G * (spatial size) values of that group:
//     mean, var = the group's (var biased),   xhat = (x - mean) / sqrt(var + eps)
//     y = xhat * weight[c] + bias[c]          (per channel, as PyTorch; weight 1 and bias 0 without affine)
// backward: dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy weight[c], the means over the group;
// dweight[c] = sum dy xhat, dbias[c] = sum dy over every sample and spatial position of channel c.
// eps is always inside the sqrt. Statistics have N * G entries, ordered n * G + g.
// Built on the core (core/groups.hpp) with the per-channel-in-group affine: NCHW is the shape
// [1][N*G][C/G*spatial] (one call). Channels-last with one channel per group (InstanceNorm) is one
// call per sample of shape [spatial][C][1], the column kernels (statistics offset per sample,
// per-channel gradients summed in sample order, so the results do not depend on the thread count);
// with several channels per group it runs on the same per-sample column shape, a group per channel,
// each group's statistics (or gradient sums) merged from its channels' (forward_channels_last,
// backward_channels_last). A ColMajor tensor runs through a RowMajor copy (same results).
// Types: T (x, y, dy, dx) is float, double, Eigen::bfloat16 or Eigen::half; statistics and gradient
// sums are accum_t<T>; P (weight, bias, gradients) is T or float beside bfloat16/half.
// InstanceNorm (instance_norm.hpp) is the same map with one channel per group, plus running statistics.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "calling_forms.hpp"
#include "core/groups.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "state.hpp"
#include "tensor_view.hpp"
#include "thread_pool.hpp"

namespace normkit {

struct GroupNormOptions {
  double eps = 1e-5;
  bool affine = true;             // learnable per-channel weight (1) and bias (0)
  Eigen::Index channel_axis = 1;  // (N, C, ...) as PyTorch; -1 = last axis (channels-last)
};

namespace detail {

// How an (N, C, spatial...) tensor with G groups of C/G channels is seen by the core: `calls` calls
// of `shape`, `stride` elements and shape.groups statistics apart (RowMajor memory).
struct GroupedMap {
  core::GroupShape shape;
  Index calls = 0, stride = 0;
  // Channels-last with several channels per group: forward and backward run per sample on the
  // (S, C) column shape (forward_channels_last, backward_channels_last), not on a core shape of
  // their own (the per-sample [S][G][C/G] shape would walk runs of C/G values S apart, one cache
  // line per run and group: 0.01-0.04 of copy). `shape` is then the NCHW one, for stats_size().
  bool channels_last_groups = false;
  Index N = 0, S = 0, C = 0;
  Index stats_size() const { return calls * shape.groups; }
  Index size() const { return N * C * S; }  // the whole tensor: what decides streaming stores
};

// Checks x's rank, channel axis and channel count; maps it. `name` heads messages, min_rank is the
// functor's.
template <class X>
GroupedMap grouped_map(const std::string& where, const char* name, const X& x, Index channels, Index groups,
                       Index channel_axis, Index min_rank) {
  constexpr Index rank = rank_v<X>;
  const auto dims = dims_of(x);
  if (rank < min_rank)
    throw_shape(where, "x has dimensions " + dims_string(dims) + " (rank " + std::to_string(rank) + ") but " + name +
                           " needs rank >= " + std::to_string(min_rank) + " (N, C" +
                           (min_rank > 2 ? ", spatial...)" : ", ...)"));
  const Index axis = channel_axis < 0 ? channel_axis + rank : channel_axis;
  if (axis != 1 && axis != rank - 1)
    throw_invalid(where, "channel_axis " + std::to_string(channel_axis) + " must be 1 or the last axis (-1 or " +
                             std::to_string(rank - 1) + ") for x of rank " + std::to_string(rank));
  const Index c = dims[std::size_t(axis)];
  if (c != channels)
    throw_shape(where, "x has dimensions " + dims_string(dims) + " with " + std::to_string(c) + " channels on axis " +
                           std::to_string(axis) + " but num_channels is " + std::to_string(channels) + " (expected [" +
                           std::to_string(channels) + "] there)");
  // S: the spatial size, the product of every axis but N and C.
  Index S = 1;
  for (Index a = 1; a < rank; ++a)
    if (a != axis) S *= dims[std::size_t(a)];
  const Index N = dims[0];
  const Index cpg = channels / groups;
  GroupedMap m;
  m.N = N, m.S = S, m.C = channels;
  m.channels_last_groups = axis != 1 && S > 1 && cpg > 1;
  // NCHW (or one spatial position, where both layouts are (N, C)): each group is a contiguous run,
  // one call for the batch, unless a group holds one value (the core's column shape, per sample).
  if ((axis == 1 || S == 1 || m.channels_last_groups) && cpg * S != 1) {
    m.shape = core::GroupShape{1, N * groups, cpg * S};
    m.calls = 1, m.stride = N * channels * S;
  } else {
    m.shape = core::GroupShape{S, groups, cpg};
    m.calls = N, m.stride = S * channels;
  }
  return m;
}

// GroupNorm and InstanceNorm's core calls over a GroupedMap, on RowMajor memory. The parameters are
// read as A (a copy of C values for 16-bit P), so that per-sample gradients sum in A and round once.
template <class T, class P>
class GroupedCore {
  using A = accum_t<T>;

 public:
  GroupedCore(const Eigen::Tensor<P, 1>& weight, const Eigen::Tensor<P, 1>& bias, Index channels, Index groups,
              double eps) {
    if constexpr (std::is_same_v<P, A>) {
      w_ = weight.size() ? weight.data() : nullptr, b_ = bias.size() ? bias.data() : nullptr;
    } else {
      wa_.resize(std::size_t(weight.size())), ba_.resize(std::size_t(bias.size()));
      for (Index i = 0; i < weight.size(); ++i) wa_[std::size_t(i)] = static_cast<A>(weight(i));
      for (Index i = 0; i < bias.size(); ++i) ba_[std::size_t(i)] = static_cast<A>(bias(i));
      w_ = wa_.empty() ? nullptr : wa_.data(), b_ = ba_.empty() ? nullptr : ba_.data();
    }
    p_.eps = eps;
    p_.affine_axis = core::AffineAxis::Channel;
    p_.weight = w_, p_.bias = b_;
    p_.channel_groups = groups, p_.group_channels = channels / groups;
    channels_ = channels;
  }

  template <class Exec>
  void forward(const Exec& exec, const GroupedMap& m, const T* x, T* y, const core::StatsArrays<A>& st,
               core::StatsMode mode) const {
    if (m.channels_last_groups) {  // GroupNorm: always batch statistics
      eigen_assert(mode == core::StatsMode::Compute);
      return forward_channels_last(exec, m, x, y, st);
    }
    const Index G = m.shape.groups;
    const auto off = [&](A* p, Index k) { return p ? p + k * G : nullptr; };
    // Several calls (one per sample) are spread over the executor, each run serially: a sample's
    // shape is often one chunk. The core's chunks depend on the shape only, so the bits do not
    // depend on which executor runs a call.
    const auto call = [&](const auto& ex, Index k) {
      core::forward_groups<A>(ex, x + k * m.stride, y + k * m.stride, m.shape, p_,
                              core::StatsArrays<A>{off(st.mean, k), off(st.mean_lo, k), off(st.rstd, k),
                                                   off(st.var, k)},
                              mode, m.size());
    };
    if (m.calls == 1) call(exec, 0);
    else exec.run(m.calls, [&](Index k) { call(core::SerialExecutor{}, k); });
  }

  // Channels-last, several channels per group, sample by sample on the sample's (S, C) column shape:
  // each channel's moments down its column (panels of whole rows: contiguous loads), merged over the
  // group's channels in channel order (Chan et al.'s pairwise update, as any two runs merge), the
  // group's statistics written by the same finish as every other shape; then one sweep with each
  // channel's group statistics and its own weight and bias (the BatchNorm-eval sweep). Reads x
  // twice and writes y once (a reorder to (N, C, S) and back moved the tensor three more times).
  template <class Exec>
  void forward_channels_last(const Exec& exec, const GroupedMap& m, const T* x, T* y,
                             const core::StatsArrays<A>& st) const {
    const std::size_t C = std::size_t(m.C);
    std::vector<core::Moments<A>> moments(std::size_t(m.N) * C);
    std::vector<A> coef(3 * moments.size());  // per sample: mean, mean_lo, rstd of each channel
    const auto sample = [&](const auto& ex, Index n) {
      forward_sample_channels_last(ex, m, n, x, y, st, moments.data() + std::size_t(n) * C,
                                   coef.data() + 3 * std::size_t(n) * C);
    };
    // As forward's calls: samples spread over the executor, each run serially (bits independent of it).
    if (m.N == 1) sample(exec, 0);
    else exec.run(m.N, [&](Index n) { sample(core::SerialExecutor{}, n); });
  }
  template <class Exec>
  void forward_sample_channels_last(const Exec& exec, const GroupedMap& m, Index n, const T* x, T* y,
                                    const core::StatsArrays<A>& st, core::Moments<A>* moments, A* coef) const {
    const Index C = m.C, G = p_.channel_groups, cpg = p_.group_channels, at = n * C * m.S;
    const core::GroupShape columns{m.S, C, 1};
    core::NormParams<A> per_column = p_;  // a group per channel; its affine is the group's
    per_column.channel_groups = C, per_column.group_channels = 1;
    core::moments_groups(exec, x + at, columns, per_column, moments, m.size());
    core::NormForward<A, A, core::LoadX<T>, core::StoreY<T>> group_stats;  // finish only
    const auto off = [&](A* a) { return a ? a + n * G : nullptr; };
    group_stats.p = p_;
    group_stats.stats = core::StatsArrays<A>{off(st.mean), off(st.mean_lo), off(st.rstd), off(st.var)};
    A *mean = coef, *mean_lo = coef + C, *rstd = coef + 2 * C;
    for (Index g = 0; g < G; ++g) {
      core::Moments<A> total;
      for (Index j = g * cpg; j < (g + 1) * cpg; ++j) total = core::merge(total, moments[j]);
      const auto c = group_stats.finish(g, {}, total);
      for (Index j = g * cpg; j < (g + 1) * cpg; ++j) mean[j] = c.mean, mean_lo[j] = c.mean_lo, rstd[j] = c.scale;
    }
    core::forward_groups<A>(exec, x + at, y + at, columns, per_column,
                            core::StatsArrays<A>{mean, mean_lo, rstd, nullptr}, core::StatsMode::Given, m.size());
  }

  // Backward as forward_channels_last, on each sample's (S, C) column shape: every channel's sums of
  // dy and dy * xhat (its dbias and dweight share), the group's sums from them (g = dy * weight), then
  // dx with the group's means and the channel's weight. Per-sample parameter gradients are summed in
  // sample order.
  template <class Exec>
  void backward_channels_last(const Exec& exec, const GroupedMap& m, const T* x, const T* dy, T* dx,
                              const core::StatsArrays<const A>& st, P* dweight, P* dbias) const {
    const std::size_t C = std::size_t(m.C);
    std::vector<A> scratch(7 * C * std::size_t(m.N));  // per sample: see backward_sample_channels_last
    const auto sample = [&](const auto& ex, Index n) {
      backward_sample_channels_last(ex, m, n, x, dy, dx, st, scratch.data() + 7 * C * std::size_t(n));
    };
    if (m.N == 1) sample(exec, 0);
    else exec.run(m.N, [&](Index n) { sample(core::SerialExecutor{}, n); });
    if (!w_) return;
    for (std::size_t c = 0; c < C; ++c) {
      A dw = 0, db = 0;
      for (std::size_t n = 0; n < std::size_t(m.N); ++n)
        db += scratch[7 * C * n + 3 * C + c], dw += scratch[7 * C * n + 4 * C + c];
      if (dweight) dweight[c] = static_cast<P>(dw);
      if (dbias) dbias[c] = static_cast<P>(db);
    }
  }
  // scratch: mean, mean_lo, rstd of each channel's group; its sum(dy), sum(dy * xhat); the group's two.
  template <class Exec>
  void backward_sample_channels_last(const Exec& exec, const GroupedMap& m, Index n, const T* x, const T* dy, T* dx,
                                     const core::StatsArrays<const A>& st, A* scratch) const {
    const Index C = m.C, G = p_.channel_groups, cpg = p_.group_channels, at = n * C * m.S;
    A *mean = scratch, *mean_lo = scratch + C, *rstd = scratch + 2 * C, *sum_dy = scratch + 3 * C,
      *sum_dy_xhat = scratch + 4 * C, *group_dy = scratch + 5 * C, *group_dy_xhat = scratch + 6 * C;
    for (Index g = 0; g < G; ++g)
      for (Index j = g * cpg; j < (g + 1) * cpg; ++j)
        mean[j] = st.mean ? st.mean[n * G + g] : A(0), mean_lo[j] = st.mean_lo ? st.mean_lo[n * G + g] : A(0),
        rstd[j] = st.rstd[n * G + g];
    const core::GroupShape columns{m.S, C, 1};
    const core::StatsArrays<const A> stats{mean, mean_lo, rstd};
    core::NormParams<A> per_column = p_;  // a group per channel, its weight applied to dy
    per_column.channel_groups = C, per_column.group_channels = 1;
    core::NormParams<A> unweighted = per_column;
    unweighted.weight = unweighted.bias = nullptr;
    core::backward_sums_groups<A>(exec, x + at, dy + at, columns, unweighted, stats, sum_dy, sum_dy_xhat, m.size());
    for (Index g = 0; g < G; ++g) {
      const core::Sums<A> total = core::weighted_channel_sums(sum_dy, sum_dy_xhat, w_, g * cpg, cpg);
      for (Index j = g * cpg; j < (g + 1) * cpg; ++j) group_dy[j] = total.s1, group_dy_xhat[j] = total.s2;
    }
    core::backward_dx_groups<A>(exec, x + at, dy + at, dx + at, columns, per_column, stats, group_dy, group_dy_xhat,
                                cpg * m.S, m.size());
  }

  // dweight/dbias: C values each, or null without affine; written (zeros for an empty batch).
  template <class Exec>
  void backward(const Exec& exec, const GroupedMap& m, const T* x, const T* dy, T* dx,
                const core::StatsArrays<const A>& st, core::StatsOrigin origin, P* dweight, P* dbias) const {
    if (m.channels_last_groups) {  // GroupNorm: always batch statistics
      eigen_assert(origin == core::StatsOrigin::Batch);
      return backward_channels_last(exec, m, x, dy, dx, st, dweight, dbias);
    }
    const Index G = m.shape.groups, C = channels_;
    const auto off = [&](const A* p, Index k) { return p ? p + k * G : nullptr; };
    std::vector<A> dw(w_ ? std::size_t(C) : 0, A(0)), db(w_ ? std::size_t(C) : 0, A(0));
    // Per call (sample) gradients, summed in call order afterwards: the same bits for any executor.
    const std::size_t per_call = m.calls > 1 ? dw.size() : 0;
    std::vector<A> dw_k(per_call * std::size_t(m.calls)), db_k(dw_k.size());
    const auto call = [&](const auto& ex, Index k) {
      A* out_w = dw.empty() ? nullptr : (m.calls == 1 ? dw.data() : dw_k.data() + std::size_t(k) * per_call);
      A* out_b = db.empty() ? nullptr : (m.calls == 1 ? db.data() : db_k.data() + std::size_t(k) * per_call);
      core::backward_groups<A>(ex, x + k * m.stride, dy + k * m.stride, dx + k * m.stride, m.shape, p_,
                               core::StatsArrays<const A>{off(st.mean, k), off(st.mean_lo, k), off(st.rstd, k)}, origin,
                               out_w, out_b, m.size());
    };
    if (m.calls == 1) {
      call(exec, 0);
    } else {
      exec.run(m.calls, [&](Index k) { call(core::SerialExecutor{}, k); });
      for (std::size_t k = 0; k < std::size_t(m.calls); ++k)
        for (std::size_t c = 0; c < per_call; ++c) dw[c] += dw_k[k * per_call + c], db[c] += db_k[k * per_call + c];
    }
    if (!dw.empty()) {
      for (Index c = 0; c < C; ++c) {
        if (dweight) dweight[c] = static_cast<P>(dw[std::size_t(c)]);
        if (dbias) dbias[c] = static_cast<P>(db[std::size_t(c)]);
      }
    }
  }

 private:
  std::vector<A> wa_, ba_;
  const A* w_ = nullptr;
  const A* b_ = nullptr;
  core::NormParams<A> p_;
  Index channels_ = 0;
};

// x, dy in RowMajor memory (their own, or a reordered copy), y, dx written through OutputIn.
template <class X>
using RowMajorCopy = Eigen::Tensor<scalar_t<X>, rank_v<X>, Eigen::RowMajor>;

// Checks of backward's statistics: N * G entries (mean_lo may be empty).
template <class S>
void check_grouped_stats(const std::string& where, const S& stats, Index expected) {
  check_size(where, "stats.mean", expected, stats.mean.size());
  check_size(where, "stats.rstd", expected, stats.rstd.size());
  if (stats.mean_lo.size() != 0) check_size(where, "stats.mean_lo", expected, stats.mean_lo.size());
}

}  // namespace detail

template <class T, class P = T>
class GroupNorm : public detail::CallingForms<GroupNorm<T, P>, T, P> {
  friend detail::CallingForms<GroupNorm<T, P>, T, P>;
  static_assert(is_storage_v<T>, "normkit: T must be float, double, Eigen::bfloat16 or Eigen::half");
  static_assert(is_param_type_v<T, P>,
                "normkit: the parameter type P must be T or accum_t<T> (float beside bfloat16/half)");
  using A = accum_t<T>;
  using Index = Eigen::Index;

 public:
  GroupNorm(Index num_groups, Index num_channels, GroupNormOptions options = {})
      : options_(options), groups_(num_groups), channels_(num_channels) {
    if (num_groups < 1)
      detail::throw_invalid("GroupNorm", "num_groups must be >= 1, got " + std::to_string(num_groups));
    if (num_channels < 1)
      detail::throw_invalid("GroupNorm", "num_channels must be >= 1, got " + std::to_string(num_channels));
    if (num_channels % num_groups != 0)
      detail::throw_invalid("GroupNorm", "num_channels (" + std::to_string(num_channels) +
                                             ") must be divisible by num_groups (" + std::to_string(num_groups) + ")");
    detail::check_eps("GroupNorm", options_.eps);
    if (options_.affine) {
      weight_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(1));
      bias_ = Eigen::Tensor<P, 1>(channels_).setConstant(P(0));
    }
  }

  Index num_groups() const { return groups_; }
  Index num_channels() const { return channels_; }
  const GroupNormOptions& options() const { return options_; }
  Eigen::Tensor<P, 1>& weight() { return weight_; }
  const Eigen::Tensor<P, 1>& weight() const { return weight_; }
  Eigen::Tensor<P, 1>& bias() { return bias_; }
  const Eigen::Tensor<P, 1>& bias() const { return bias_; }

  // State in PyTorch's names (state.hpp): "weight", "bias" (affine).
  StateDict<P> state_dict() const { return detail::state_of<P>(slots_of(*this), std::nullopt); }
  void load_state_dict(const StateDict<P>& state, bool strict = true) {
    detail::load_state("GroupNorm::load_state_dict", slots_of(*this), state, nullptr, strict);
  }
  void set_weight(const P* data, Index size) {
    detail::set_param("GroupNorm::set_weight", slots_of(*this)[0], data, size);
  }
  void set_weight(const std::vector<P>& v) { set_weight(v.data(), static_cast<Index>(v.size())); }
  void set_bias(const P* data, Index size) { detail::set_param("GroupNorm::set_bias", slots_of(*this)[1], data, size); }
  void set_bias(const std::vector<P>& v) { set_bias(v.data(), static_cast<Index>(v.size())); }

 private:
  template <class Self>
  static auto slots_of(Self& self) {
    using Tensor = std::conditional_t<std::is_const_v<Self>, const Eigen::Tensor<P, 1>, Eigen::Tensor<P, 1>>;
    const Index affine = self.options_.affine ? self.channels_ : 0;
    return std::array<detail::ParamSlot<Tensor>, 2>{{{"weight", &self.weight_, affine}, {"bias", &self.bias_, affine}}};
  }
  void check_params(const std::string& where) const {
    for (const auto& slot : slots_of(*this)) detail::check_param(where, slot.name, slot.size, slot.tensor->size());
  }

  template <class Exec, class X, class Y>
  NormStats<T> forward_on(const Exec& exec, const X& x, Y& y) const {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<Y>, T>,
                  "normkit: x and y must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<Y>, "normkit: x and y must have the same rank");
    const std::string where = "GroupNorm::forward";
    const detail::GroupedMap m = detail::grouped_map(where, "GroupNorm", x, channels_, groups_, options_.channel_axis,
                                                     2);
    detail::check_same_dims(where, "y", y, "x", x);
    check_params(where);

    NormStats<T> stats;
    const Index n = m.stats_size();
    stats.mean.resize(n), stats.mean_lo.resize(n), stats.rstd.resize(n);
    detail::RowMajorCopy<X> x_copy;
    const T* xp = detail::in_layout<Eigen::RowMajor>(x, x_copy);
    detail::OutputIn<Eigen::RowMajor, Y> out(y);
    const detail::GroupedCore<T, P> core(weight_, bias_, channels_, groups_, options_.eps);
    core.forward(exec, m, xp, out.data(),
                 core::StatsArrays<A>{stats.mean.data(), stats.mean_lo.data(), stats.rstd.data()},
                 core::StatsMode::Compute);
    out.commit();
    return stats;
  }

  template <class Exec, class X, class DY, class DX>
  NormGrads<P> backward_on(const Exec& exec, const X& x, const DY& dy, const NormStats<T>& stats, DX& dx) const {
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<DY>, T> &&
                      std::is_same_v<detail::scalar_t<DX>, T>,
                  "normkit: x, dy and dx must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<DY> && detail::rank_v<X> == detail::rank_v<DX>,
                  "normkit: x, dy and dx must have the same rank");
    const std::string where = "GroupNorm::backward";
    const detail::GroupedMap m = detail::grouped_map(where, "GroupNorm", x, channels_, groups_, options_.channel_axis,
                                                     2);
    detail::check_same_dims(where, "dy", dy, "x", x);
    detail::check_same_dims(where, "dx", dx, "x", x);
    check_params(where);
    detail::check_grouped_stats(where, stats, m.stats_size());

    NormGrads<P> grads;
    if (options_.affine) grads.weight.resize(channels_), grads.bias.resize(channels_);
    detail::RowMajorCopy<X> x_copy;
    detail::RowMajorCopy<DY> dy_copy;
    const T* xp = detail::in_layout<Eigen::RowMajor>(x, x_copy);
    const T* dyp = detail::in_layout<Eigen::RowMajor>(dy, dy_copy);
    detail::OutputIn<Eigen::RowMajor, DX> out(dx);
    const detail::GroupedCore<T, P> core(weight_, bias_, channels_, groups_, options_.eps);
    core.backward(exec, m, xp, dyp, out.data(),
                  core::StatsArrays<const A>{stats.mean.data(), stats.mean_lo.size() ? stats.mean_lo.data() : nullptr,
                                             stats.rstd.data()},
                  core::StatsOrigin::Batch, options_.affine ? grads.weight.data() : nullptr,
                  options_.affine ? grads.bias.data() : nullptr);
    out.commit();
    return grads;
  }

  GroupNormOptions options_;
  Index groups_, channels_;
  Eigen::Tensor<P, 1> weight_, bias_;
};

}  // namespace normkit
