// normkit/moments.hpp — mergeable statistics: the count, mean and sum of squared deviations of a
// block of values, and Chan's update that combines two blocks into the statistics of their union.
//
// These are the statistics every normkit layer computes internally (core/moments.hpp), made public
// so that the partial statistics of data held in different places (threads, files, processes) can
// be combined without a second pass and without E[x^2] - E[x]^2's cancellation:
//     normkit::Moments<double> a = normkit::moments_of<double>(x, n), b = normkit::moments_of<double>(z, k);
//     normkit::Moments<double> ab = normkit::merge_moments(a, b);   // == moments_of(x ++ z), to rounding
//     double m = normkit::mean_of(ab), v = normkit::variance_of(ab), s2 = normkit::variance_of(ab, true);
// A Moments is plain data {count, mean, mean_lo, m2, exp2}: the mean is the pair mean + mean_lo (the
// low part keeps the bits lost in rounding the mean to A), m2 is in units of 4^exp2 (exp2 is 0 for
// any data whose squares stay in A's range). To send one across processes, send all five fields.
// Merging is deterministic: the same blocks merged in the same order give the same bits on every
// machine with the same A arithmetic, which is how SyncBatchNorm (mpi.hpp) makes every rank agree.
// A is float or double (accum_t<T> for storage type T).
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "core/groups.hpp"
#include "options.hpp"

namespace normkit {

template <class A>
using Moments = core::Moments<A>;

// The moments of n values of storage type T (float, double, bfloat16, half), accumulated in A.
template <class A, class T>
Moments<A> moments_of(const T* data, Eigen::Index n) {
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, double>, "normkit: A must be float or double");
  if (n <= 0) return {};
  return core::detail::run_moments<A>(data, n, true);
}

// The moments of the union of two disjoint blocks (Chan, Golub & LeVeque). Empty blocks are the
// identity; a is taken as the first block (the order matters only to the last bits).
template <class A>
Moments<A> merge_moments(const Moments<A>& a, const Moments<A>& b) {
  return core::merge(a, b);
}

// The mean, the variance (biased: m2 / count; unbiased: m2 / (count - 1)), in A. NaN when empty.
template <class A>
A mean_of(const Moments<A>& m) {
  return m.count ? m.mean + m.mean_lo : std::numeric_limits<A>::quiet_NaN();
}
template <class A>
A variance_of(const Moments<A>& m, bool unbiased = false) {
  const Eigen::Index d = m.count - (unbiased ? 1 : 0);
  if (d <= 0) return std::numeric_limits<A>::quiet_NaN();
  const long double v = static_cast<long double>(m.m2) / static_cast<long double>(d);
  return static_cast<A>(m.exp2 ? std::ldexp(v, 2 * m.exp2) : v);
}

}  // namespace normkit
