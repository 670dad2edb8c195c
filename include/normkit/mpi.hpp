// normkit/mpi.hpp — SyncBatchNorm<T, P = T>: BatchNorm over a batch split across the ranks of an
// MPI communicator (data-parallel training on CPUs), as PyTorch's SyncBatchNorm does on GPUs.
//
// Needs <mpi.h> (CMake: link normkit::mpi). The interface is BatchNorm's (batch_norm.hpp), built as
//     normkit::SyncBatchNorm<float> bn(C, MPI_COMM_WORLD);     // every rank, the same C and options
// and every rank must call forward and backward together, in the same mode (training forwards and
// backwards of Synced statistics are collective; eval forwards are local). In training:
//   forward   each rank takes its channels' (count, mean, M2) from its own slice (any N, even 0),
//             then one small all-gather checks C and sums the counts, and one all-gather of 4C
//             values per rank shares the moments; every rank merges them in rank order with the
//             core's Chan update (moments.hpp), so all ranks normalize with the same bits and end
//             with the same running_mean, running_var and num_batches_tracked. y equals what one
//             BatchNorm gives on the concatenated batch, to rounding.
//   backward  each rank takes its per-channel sum(dy) and sum(dy * xhat), one all-gather of 2C + 3
//             values per rank (with the checks' result and the count) shares them, every rank adds
//             them in rank order (the same bits everywhere, whatever MPI's reduction order), and dx
//             follows. The returned dweight/dbias are this rank's own share: summed over the ranks
//             they are the whole batch's, which data-parallel training all-reduces with the other
//             parameter gradients (as PyTorch leaves to DistributedDataParallel).
// Eval mode communicates nothing: running statistics, or (track_running_stats = false) the local
// batch, as PyTorch's SyncBatchNorm. Backward follows stats.source (StatsSource::Synced for a
// training forward), so forward, eval(), backward still all-reduces.
// Errors: a check that fails on any rank throws on every rank (none is left waiting in a
// collective): a channel count that differs across ranks throws shape_error everywhere; the rank
// whose arguments failed throws its own detailed error and the others an error of the same kind
// naming that rank. backward relies on forward having checked that C agrees (its all-gather is
// 2C + 3 values long). MPI errors abort, as MPI_ERRORS_ARE_FATAL (MPI's default) does; with
// another error handler a failed call throws std::runtime_error.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch_norm.hpp"
#include "moments.hpp"

namespace normkit {
namespace detail {

template <class A>
MPI_Datatype mpi_type() {
  return std::is_same_v<A, double> ? MPI_DOUBLE : MPI_FLOAT;
}

inline void check_mpi(int rc, const std::string& where, const char* call) {
  if (rc != MPI_SUCCESS)
    throw std::runtime_error("normkit::" + where + ": " + call + " failed (MPI error " + std::to_string(rc) + ")");
}

// What a rank's argument checks found, as a number the ranks can exchange: 0 passed, else the kind.
enum CheckCode : std::int64_t { kCheckPassed = 0, kCheckShape = 1, kCheckInvalid = 2, kCheckOther = 3 };

template <class F>
std::int64_t run_checks(F&& checks, std::exception_ptr& error) {
  try {
    checks();
    return kCheckPassed;
  } catch (const shape_error&) {
    error = std::current_exception();
    return kCheckShape;
  } catch (const std::invalid_argument&) {
    error = std::current_exception();
    return kCheckInvalid;
  } catch (...) {
    error = std::current_exception();
    return kCheckOther;
  }
}

// After the exchange: if any rank's checks failed, every rank throws. The failing ranks rethrow
// their own error, the others throw one of the first failing rank's kind.
inline void throw_if_any_failed(const std::string& where, const std::vector<std::int64_t>& codes,
                                const std::exception_ptr& mine) {
  for (std::size_t r = 0; r < codes.size(); ++r) {
    if (codes[r] == kCheckPassed) continue;
    if (mine) std::rethrow_exception(mine);
    const std::string what = "the arguments of rank " + std::to_string(r) + " failed its checks (that rank says why)";
    if (codes[r] == kCheckShape) throw_shape(where, what);
    if (codes[r] == kCheckInvalid) throw_invalid(where, what);
    throw std::runtime_error("normkit::" + where + ": " + what);
  }
}

// The channel counts of all ranks must agree (each rank has checked its x against its own C).
inline void check_same_channels(const std::string& where, const std::vector<std::int64_t>& channels) {
  for (std::size_t r = 1; r < channels.size(); ++r)
    if (channels[r] != channels[0])
      throw_shape(where, "num_features differs across ranks: rank 0 has " + std::to_string(channels[0]) + ", rank " +
                             std::to_string(r) + " has " + std::to_string(channels[r]) +
                             " (every rank must normalize the same C channels)");
}

}  // namespace detail

template <class T, class P = T>
class SyncBatchNorm : public detail::BatchNormBase<T, P>, public detail::CallingForms<SyncBatchNorm<T, P>, T, P> {
  friend detail::CallingForms<SyncBatchNorm<T, P>, T, P>;
  using A = accum_t<T>;
  using Index = Eigen::Index;

 public:
  SyncBatchNorm(Index num_features, MPI_Comm comm, BatchNormOptions options = {})
      : detail::BatchNormBase<T, P>("SyncBatchNorm", num_features, options), comm_(comm) {}

  MPI_Comm comm() const { return comm_; }

 private:
  std::size_t ranks() const {
    int n = 0;
    detail::check_mpi(MPI_Comm_size(comm_, &n), "SyncBatchNorm", "MPI_Comm_size");
    return static_cast<std::size_t>(n);
  }

  // Collective 1, fixed size: every rank's check result, C and values per channel. Throws on every
  // rank when any rank's checks failed or C differs; returns every rank's count.
  std::vector<std::int64_t> share_checks(const std::string& where, std::int64_t code, const std::exception_ptr& error,
                                         Index count) const {
    const std::size_t P_ = ranks();
    std::int64_t mine[3] = {code, static_cast<std::int64_t>(this->channels_), static_cast<std::int64_t>(count)};
    std::vector<std::int64_t> all(3 * P_), codes(P_), channels(P_), counts(P_);
    detail::check_mpi(MPI_Allgather(mine, 3, MPI_INT64_T, all.data(), 3, MPI_INT64_T, comm_), where, "MPI_Allgather");
    for (std::size_t r = 0; r < P_; ++r)
      codes[r] = all[3 * r], channels[r] = all[3 * r + 1], counts[r] = all[3 * r + 2];
    detail::throw_if_any_failed(where, codes, error);
    detail::check_same_channels(where, channels);
    return counts;
  }

  // Collective 2: every rank's per-channel moments (4C values each), merged in rank order with the
  // core's Chan update into the statistics of the whole batch: the same bits on every rank.
  void merge_ranks(const std::string& where, const std::vector<Moments<A>>& local,
                   const std::vector<std::int64_t>& counts, NormStats<T>& stats, Eigen::Tensor<A, 1>& var) const {
    const Index C = this->channels_;
    std::vector<A> send(static_cast<std::size_t>(4 * C)), recv(send.size() * counts.size());
    for (Index c = 0; c < C; ++c) {
      const Moments<A>& m = local.data()[c];
      A* out = send.data() + 4 * c;
      out[0] = m.mean, out[1] = m.mean_lo, out[2] = m.m2, out[3] = static_cast<A>(m.exp2);
    }
    detail::check_mpi(MPI_Allgather(send.data(), static_cast<int>(4 * C), detail::mpi_type<A>(), recv.data(),
                                    static_cast<int>(4 * C), detail::mpi_type<A>(), comm_),
                      where, "MPI_Allgather");
    stats.source = StatsSource::Synced;
    stats.mean.resize(C), stats.mean_lo.resize(C), stats.rstd.resize(C);
    for (Index c = 0; c < C; ++c) {
      Moments<A> m;
      for (std::size_t r = 0; r < counts.size(); ++r) {
        const A* v = recv.data() + send.size() * r + 4 * c;
        m = merge_moments(m, Moments<A>{static_cast<Index>(counts[r]), v[0], v[1], v[2], static_cast<int>(v[3])});
      }
      stats.mean(c) = m.mean, stats.mean_lo(c) = m.mean_lo, var(c) = core::variance(m);
      stats.rstd(c) = core::detail::group_rstd(m, this->options_.eps, /*eps_inside_sqrt=*/true);
    }
  }

  // Backward's one collective: every rank's check result, C, count and two sums per channel (2C + 3
  // doubles), the sums added in rank order (in double: exact for float sums and for counts, then
  // rounded once to A) on every rank. Throws on every rank as share_checks does; returns the count.
  Index sum_ranks(const std::string& where, std::int64_t code, const std::exception_ptr& error, Index count,
                  std::vector<A>& sum_dy, std::vector<A>& sum_dy_xhat) const {
    const Index C = this->channels_;
    const std::size_t P_ = ranks(), len = static_cast<std::size_t>(2 * C + 3);
    std::vector<double> send(len), recv(len * P_);
    double* mine = send.data();
    mine[0] = static_cast<double>(code), mine[1] = static_cast<double>(C), mine[2] = static_cast<double>(count);
    for (Index c = 0; c < C; ++c) mine[3 + c] = sum_dy.data()[c], mine[3 + C + c] = sum_dy_xhat.data()[c];
    detail::check_mpi(MPI_Allgather(send.data(), static_cast<int>(len), MPI_DOUBLE, recv.data(), static_cast<int>(len),
                                    MPI_DOUBLE, comm_),
                      where, "MPI_Allgather");
    std::vector<std::int64_t> codes(P_), channels(P_);
    std::int64_t total = 0;
    for (std::size_t r = 0; r < P_; ++r) {
      const double* in = recv.data() + len * r;
      codes[r] = static_cast<std::int64_t>(in[0]), channels[r] = static_cast<std::int64_t>(in[1]);
      total += static_cast<std::int64_t>(in[2]);
    }
    detail::throw_if_any_failed(where, codes, error);
    detail::check_same_channels(where, channels);
    for (Index c = 0; c < C; ++c) {
      double g = 0, gx = 0;
      for (std::size_t r = 0; r < P_; ++r) {
        const double* in = recv.data() + len * r;
        g += in[3 + c], gx += in[3 + C + c];
      }
      sum_dy.data()[c] = static_cast<A>(g), sum_dy_xhat.data()[c] = static_cast<A>(gx);
    }
    return static_cast<Index>(total);
  }

  template <class Exec, class X, class Y>
  NormStats<T> forward_on(const Exec& exec, const X& x, Y& y) {
    if (!this->training_) return detail::BatchNormBase<T, P>::forward_on(exec, x, y);  // eval: nothing to share
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<Y>, T>,
                  "normkit: x and y must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<Y>, "normkit: x and y must have the same rank");
    const std::string where = "SyncBatchNorm::forward";
    const Index C = this->channels_;
    core::GroupShape s;
    std::exception_ptr error;
    const std::int64_t code = detail::run_checks(
        [&] {
      s = this->shape_of(where, x);
      detail::check_same_dims(where, "y", y, "x", x);
      this->check_params(where);
        },
        error);

    const std::vector<std::int64_t> counts = share_checks(where, code, error, s.group_size());
    std::int64_t total = 0;
    for (const std::int64_t n : counts) total += n;
    if (total == 1)
      detail::throw_invalid(where, "expected more than 1 value per channel over all ranks when training, got 1");

    std::vector<Moments<A>> local(static_cast<std::size_t>(C));
    core::moments_groups<A>(exec, x.data(), s, this->params(), local.data());
    NormStats<T> stats;
    Eigen::Tensor<A, 1> var(C);
    merge_ranks(where, local, counts, stats, var);
    detail::OutputIn<detail::layout_v<X>, Y> out(y);
    core::forward_groups<A>(exec, x.data(), out.data(), s, this->params(),
                            core::StatsArrays<A>{stats.mean.data(), stats.mean_lo.data(), stats.rstd.data()},
                            core::StatsMode::Given);
    out.commit();
    if (this->options_.track_running_stats && total > 0)
      this->update_running_stats(stats, var, static_cast<Index>(total));
    return stats;
  }

  template <class Exec, class X, class DY, class DX>
  NormGrads<P> backward_on(const Exec& exec, const X& x, const DY& dy, const NormStats<T>& stats, DX& dx) const {
    if (stats.source != StatsSource::Synced) return detail::BatchNormBase<T, P>::backward_on(exec, x, dy, stats, dx);
    static_assert(std::is_same_v<detail::scalar_t<X>, T> && std::is_same_v<detail::scalar_t<DY>, T> &&
                      std::is_same_v<detail::scalar_t<DX>, T>,
                  "normkit: x, dy and dx must hold T");
    static_assert(detail::rank_v<X> == detail::rank_v<DY> && detail::rank_v<X> == detail::rank_v<DX>,
                  "normkit: x, dy and dx must have the same rank");
    const std::string where = "SyncBatchNorm::backward";
    const Index C = this->channels_;
    core::GroupShape s;
    std::exception_ptr error;
    const std::int64_t code = detail::run_checks(
        [&] {
      s = this->shape_of(where, x);
      detail::check_same_dims(where, "dy", dy, "x", x);
      detail::check_same_dims(where, "dx", dx, "x", x);
      this->check_params(where);
      detail::check_size(where, "stats.mean", C, stats.mean.size());
      detail::check_size(where, "stats.rstd", C, stats.rstd.size());
      if (stats.mean_lo.size() != 0) detail::check_size(where, "stats.mean_lo", C, stats.mean_lo.size());
        },
        error);

    const core::StatsArrays<const A> st{stats.mean.data(), stats.mean_lo.size() ? stats.mean_lo.data() : nullptr,
                                        stats.rstd.data()};
    Eigen::Tensor<T, detail::rank_v<X>, detail::layout_v<X>> dy_copy;
    const T* dyp = nullptr;
    std::vector<A> sum_dy(static_cast<std::size_t>(C), A(0)), sum_dy_xhat(sum_dy);
    if (code == detail::kCheckPassed) {
      dyp = detail::in_layout<detail::layout_v<X>>(dy, dy_copy);
      core::backward_sums_groups<A>(exec, x.data(), dyp, s, this->params(), st, sum_dy.data(), sum_dy_xhat.data());
    }

    std::vector<A> total_dy(sum_dy), total_dy_xhat(sum_dy_xhat);
    const Index total = sum_ranks(where, code, error, s.group_size(), total_dy, total_dy_xhat);
    detail::OutputIn<detail::layout_v<X>, DX> out(dx);
    core::backward_dx_groups<A>(exec, x.data(), dyp, out.data(), s, this->params(), st, total_dy.data(),
                                total_dy_xhat.data(), total);
    out.commit();
    NormGrads<P> grads;
    if (this->options_.affine) {
      grads.weight.resize(C), grads.bias.resize(C);
      for (Index c = 0; c < C; ++c)
        grads.weight(c) = static_cast<P>(sum_dy_xhat.data()[c]), grads.bias(c) = static_cast<P>(sum_dy.data()[c]);
    }
    return grads;
  }

  MPI_Comm comm_;
};

}  // namespace normkit
