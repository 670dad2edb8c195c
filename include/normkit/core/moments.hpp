// normkit/core/moments.hpp — turning raw sums into mean, variance and rstd; merging blocks.
//
// Statistics use the corrected two-pass algorithm (Chan, Golub & LeVeque, "Algorithms for computing
// the sample variance", 1983): pass 1 gives mean0 = sum(x)/n; pass 2, over the block still in cache,
// gives s1 = sum(x - mean0) and s2 = sum((x - mean0)^2). Then
//     mean = mean0 + s1/n            (kept as the pair mean0, mean_lo = s1/n)
//     m2   = s2 - s1 * s1/n          (sum of squared deviations from the corrected mean)
// The one-pass E[x^2] - E[x]^2 is never used: it loses every digit once |mean| >> std.
// Keeping the mean as a (hi, lo) pair lets later sweeps compute (x - hi) - lo, which is exact in
// its first step when x is near the mean (Sterbenz), so rounding the mean to float costs nothing.
// Blocks of one group (planes of a channel, row blocks of a column panel) combine with Chan's
// pairwise update, which folds the difference of the means into mean_lo.
#pragma once

#include <cmath>

#include <Eigen/Core>

namespace normkit::core {

using Eigen::Index;

// Sums over a block of values taken relative to a shift: s1 = sum(x - shift), s2 = sum((x - shift)^2).
template <class A>
struct Sums {
  A s1 = 0;
  A s2 = 0;
};

template <class A>
struct Moments {
  Index count = 0;
  A mean = 0;     // high part of the mean
  A mean_lo = 0;  // low part: the exact mean is mean + mean_lo
  A m2 = 0;       // sum of squared deviations from the mean
};

// The moments of a block from its two passes: mean0 from pass 1, `centered` = sums around mean0.
template <class A>
Moments<A> moments_from_sums(Index count, A mean0, const Sums<A>& centered) {
  const A lo = centered.s1 / static_cast<A>(count);
  const A m2 = centered.s2 - centered.s1 * lo;
  return {count, mean0, lo, m2 < A(0) ? A(0) : m2};  // rounding can dip below 0; NaN passes through
}

// Chan et al.'s update for the union of two disjoint blocks; the high part of `a` is kept.
template <class A>
Moments<A> merge(const Moments<A>& a, const Moments<A>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  const Index n = a.count + b.count;
  const A delta = (b.mean - a.mean) + (b.mean_lo - a.mean_lo);
  const A fraction_b = static_cast<A>(b.count) / static_cast<A>(n);
  return {n, a.mean, a.mean_lo + delta * fraction_b,
          a.m2 + b.m2 + delta * delta * static_cast<A>(a.count) * fraction_b};
}

// Biased (population) variance, what the normalization itself uses.
template <class A>
A variance(const Moments<A>& m) { return m.m2 / static_cast<A>(m.count); }

// The multiplier applied to (x - mean). Computed in double and rounded once.
template <class A>
A rstd_from_var(A var, double eps, bool eps_inside_sqrt) {
  const double v = static_cast<double>(var);
  return static_cast<A>(eps_inside_sqrt ? 1.0 / std::sqrt(v + eps) : 1.0 / (std::sqrt(v) + eps));
}

}  // namespace normkit::core
