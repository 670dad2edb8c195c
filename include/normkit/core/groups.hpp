// normkit/core/groups.hpp — the core's entry points: forward and backward of a normalization over
// a tensor seen as [outer][groups][inner] (iterate.hpp), and their halves for statistics completed
// elsewhere (SyncBatchNorm, mpi.hpp).
//
// Each is a policy of norm_policies.hpp run by run_groups. The plain-pointer forms read x and write
// y, dx as they are; the forms taking a load prologue and a store epilogue (fusion.hpp) fuse an
// input sum (x + alpha * r) or an output sum (dx + dh) into the same passes.
#pragma once

#include <algorithm>

#include "fusion.hpp"
#include "iterate.hpp"
#include "norm_policies.hpp"

namespace normkit::core {

namespace detail {
// A column shape holds one value per group in each row, so a per-channel affine there has one
// channel per group, the group's own (channel_groups == groups): the per-group affine.
template <class P>
NormParams<P> for_shape(NormParams<P> p, const GroupShape& s) {
  if (s.inner == 1 && p.affine_axis == AffineAxis::Channel) {
    eigen_assert(p.group_channels == 1 && p.channel_groups == s.groups);
    p.affine_axis = AffineAxis::Group;
  }
  return p;
}
}  // namespace detail

// Forward: compute the statistics from x (and write them), or take them as given (BatchNorm eval).
enum class StatsMode { Compute, Given };
// Backward: the statistics came from this batch, so dx carries the mean and variance terms
// (training); or they were constants (BatchNorm eval with running statistics): dx = dy * weight * rstd.
enum class StatsOrigin { Batch, Constant };

// output_elements (forward, backward, backward_dx), input_elements (the statistics and sums
// halves): the size of the whole tensor this call is a part of, when a functor calls once per
// sample; 0: the shape's own. It decides streaming and the column kernels' prefetching.
template <class A, class Load, class Store, class P, class Exec, if_fusion<Load> = 0>
void forward_groups(const Exec& exec, const Load& x, const Store& y, const GroupShape& s, const NormParams<P>& p,
                    const StatsArrays<A>& stats, StatsMode mode, Index output_elements = 0) {
  NormForward<A, P, Load, Store> pol;
  pol.x = x, pol.y = y, pol.s = s, pol.p = detail::for_shape(p, s), pol.stats = stats;
  pol.stream = stream_output<typename Load::value_type>(std::max(output_elements, s.size()));
  pol.fetch = prefetch_columns<typename Load::value_type>(std::max(output_elements, s.size()), pol.inputs);
  run_groups(exec, s, pol, mode == StatsMode::Compute ? Passes::Both : Passes::Sweep);
}
template <class A, class T, class P, class Exec>
void forward_groups(const Exec& exec, const T* x, T* y, const GroupShape& s, const NormParams<P>& p,
                    const StatsArrays<A>& stats, StatsMode mode, Index output_elements = 0) {
  forward_groups(exec, LoadX<T>{x}, StoreY<T>{y}, s, p, stats, mode, output_elements);
}

// dx from dy, and the parameter gradients: dweight = sum(dy * xhat), dbias = sum(dy) (may be null),
// per element of a group (group_size() values) for Element affine, per group for Group affine, per
// channel for Channel affine.
template <class A, class T, class P, class Store, class Exec, if_fusion<Store> = 0>
void backward_groups(const Exec& exec, const T* x, const T* dy, const Store& dx, const GroupShape& s,
                     const NormParams<P>& p, const StatsArrays<const A>& stats, StatsOrigin origin, P* dweight,
                     P* dbias, Index output_elements = 0) {
  NormBackward<A, T, P, Store> pol;
  pol.x = x, pol.dy = dy, pol.dx = dx, pol.s = s, pol.p = detail::for_shape(p, s), pol.stats = stats;
  pol.batch_stats = origin == StatsOrigin::Batch;
  pol.dweight = dweight, pol.dbias = dbias;
  pol.stream = stream_output<T>(std::max(output_elements, s.size()));
  pol.fetch = prefetch_columns<T>(std::max(output_elements, s.size()), pol.inputs);
  run_groups(exec, s, pol, Passes::Both);
}
template <class A, class T, class P, class Exec>
void backward_groups(const Exec& exec, const T* x, const T* dy, T* dx, const GroupShape& s, const NormParams<P>& p,
                     const StatsArrays<const A>& stats, StatsOrigin origin, P* dweight, P* dbias,
                     Index output_elements = 0) {
  backward_groups(exec, x, dy, StoreY<T>{dx}, s, p, stats, origin, dweight, dbias, output_elements);
}

// The statistics half of forward_groups: the moments of every group, with forward_groups' own
// chunking and merge order, so the same bits as it computes; nothing is normalized.
template <class A, class T, class P, class Exec>
void moments_groups(const Exec& exec, const T* x, const GroupShape& s, const NormParams<P>& p, Moments<A>* m,
                    Index input_elements = 0) {
  NormForward<A, P, LoadX<T>, StoreY<T>> pol;
  pol.x = LoadX<T>{x}, pol.s = s, pol.p = p, pol.moments = m;
  pol.fetch = prefetch_columns<T>(std::max(input_elements, s.size()), pol.inputs);
  run_groups(exec, s, pol, Passes::Reduce);
}

// The sums half of backward_groups with batch statistics: per group sum_dy = sum(dy) and
// sum_dy_xhat = sum(dy * xhat), i.e. dbias and dweight, and what dx needs of the whole batch.
template <class A, class T, class P, class Exec>
void backward_sums_groups(const Exec& exec, const T* x, const T* dy, const GroupShape& s, const NormParams<P>& p,
                          const StatsArrays<const A>& stats, A* sum_dy, A* sum_dy_xhat, Index input_elements = 0) {
  NormBackward<A, T, P, StoreY<T>> pol;
  pol.x = x, pol.dy = dy, pol.s = s, pol.p = p, pol.stats = stats;
  pol.fetch = prefetch_columns<T>(std::max(input_elements, s.size()), pol.inputs);
  pol.sums_out = {sum_dy, sum_dy_xhat, s.group_size()};
  run_groups(exec, s, pol, Passes::Reduce);
}

// The dx half of backward_groups with batch statistics, from sums over a batch of `count` values per
// group (count may exceed this tensor's: the batch is spread over processes). No parameter gradients.
template <class A, class T, class P, class Exec>
void backward_dx_groups(const Exec& exec, const T* x, const T* dy, T* dx, const GroupShape& s, const NormParams<P>& p,
                        const StatsArrays<const A>& stats, const A* sum_dy, const A* sum_dy_xhat, Index count,
                        Index output_elements = 0) {
  NormBackward<A, T, P, StoreY<T>> pol;
  pol.x = x, pol.dy = dy, pol.dx = StoreY<T>{dx}, pol.s = s, pol.p = p, pol.stats = stats;
  pol.stream = stream_output<T>(std::max(output_elements, s.size()));
  pol.fetch = prefetch_columns<T>(std::max(output_elements, s.size()), pol.inputs);
  pol.sums_in = {sum_dy, sum_dy_xhat, count};
  run_groups(exec, s, pol, Passes::Sweep);
}

// A group's sums from the sums of its channels [first, first + count), with g = dy * weight[c]
// (weight null: 1): sum(g) = sum_c weight[c] * sum(dy)_c, and so for sum(g * xhat); channels in
// order (GroupNorm channels-last, whose per-channel sums come from backward_sums_groups).
template <class A, class P>
Sums<A> weighted_channel_sums(const A* sum_dy, const A* sum_dy_xhat, const P* weight, Index first, Index count) {
  Sums<A> total;
  for (Index c = first; c < first + count; ++c) {
    const A w = weight ? static_cast<A>(weight[c]) : A(1);
    total.s1 = simd::madd(w, sum_dy[c], total.s1), total.s2 = simd::madd(w, sum_dy_xhat[c], total.s2);
  }
  return total;
}

}  // namespace normkit::core
