// normkit/core/moments.hpp — turning raw sums into mean, variance and rstd; merging blocks.
//
// Statistics come from sums around a shift close to the mean (Chan, Golub & LeVeque, "Algorithms for
// computing the sample variance", 1983): s1 = sum(x - shift), s2 = sum((x - shift)^2), then
//     mean = shift + s1/n            (kept as the pair shift, mean_lo = s1/n)
//     m2   = s2 - s1 * s1/n          (sum of squared deviations from the corrected mean)
// The shift comes from the block's first packet (one pass) or from a first pass over the block
// (stats.hpp says when); m2 loses only log2(1 + n (mean - shift)^2 / m2) bits, so the shift need
// only be within about a std of the mean. The unshifted E[x^2] - E[x]^2 is never used: it loses
// every digit once |mean| >> std.
// Keeping the mean as a (hi, lo) pair lets later sweeps compute (x - hi) - lo, which is exact in
// its first step when x is near the mean (Sterbenz), so rounding the mean to float costs nothing.
// Blocks of one group (planes of a channel, row blocks of a column panel) combine with Chan's
// pairwise update, which folds the difference of the means into mean_lo.
// Extreme magnitudes: squares of |x| > ~1e19 overflow float and squares of |x| < ~1e-19 lose their
// digits to underflow. A block whose sums come out non-finite or tiny is summed again on the data
// scaled by an exact power of two, 2^-exp2, with exp2 the exponent of max|x|; its m2 is then kept
// in those units (true m2 = m2 * 4^exp2) and the variance and rstd are formed in long double, whose
// range covers any float or double input. Ordinary data never takes that path.
// Every a * b + c below is written through simd::madd (fused exactly where the target has FMA), as
// the kernels' are: left to the compiler's contraction, g++ -O3 fused them in some instantiations
// of the iteration layer and not in others, and a residual forward's mean differed in its last bit
// from the plain forward's over the same h (tests/core/fusion_test.cpp, -O3 -march=x86-64-v3).
#pragma once

#include <cmath>
#include <type_traits>

#include <Eigen/Core>

#include "simd.hpp"

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
  A m2 = 0;       // sum of squared deviations from the mean, in units of 4^exp2
  int exp2 = 0;   // power-of-two scale of m2 (0 unless the block needed rescaling)
};

// hi + lo as the nearest A to their sum plus the exact remainder (Knuth's TwoSum), so that `mean`
// is the mean rounded to A and `mean_lo` only its rounding error.
template <class A>
void renormalize(A& hi, A& lo) {
  const A sum = hi + lo, lo_part = sum - hi;
  lo = (hi - (sum - lo_part)) + (lo - lo_part);
  hi = sum;
}

// The moments of a block from its sums around `mean0` (the shift).
template <class A>
Moments<A> moments_from_sums(Index count, A mean0, const Sums<A>& centered) {
  A mean = mean0, lo = centered.s1 / static_cast<A>(count);
  const A m2 = simd::madd(-centered.s1, lo, centered.s2);
  renormalize(mean, lo);
  return {count, mean, lo, m2 < A(0) ? A(0) : m2};  // rounding can dip below 0; NaN passes through
}

// Chan et al.'s update for the union of two disjoint blocks; m2 moves to the larger of the two
// scales (exact: powers of two), or further when the means are so far apart that delta^2 * n would
// overflow although each block is in range (constant BatchNorm planes at +1e30 and -1e30, found by
// the fuzzer): with |delta| 2^-e below 2^32, delta^2 * n stays below 2^104 for n < 2^40.
template <class A>
Moments<A> merge(const Moments<A>& a, const Moments<A>& b) {
  if (a.count == 0) return b;
  if (b.count == 0) return a;
  const Index n = a.count + b.count;
  const A delta = (b.mean - a.mean) + (b.mean_lo - a.mean_lo);
  int e = a.exp2 > b.exp2 ? a.exp2 : b.exp2, delta_exp = 0;
  if (std::isfinite(delta)) std::frexp(delta, &delta_exp);
  if (delta_exp - e > 32) e = delta_exp - 32;
  const A fraction_b = static_cast<A>(b.count) / static_cast<A>(n);
  const A scaled_delta = e ? std::ldexp(delta, -e) : delta;
  const A m2 = simd::madd(scaled_delta * scaled_delta * static_cast<A>(a.count), fraction_b,
                          e ? std::ldexp(a.m2, 2 * (a.exp2 - e)) + std::ldexp(b.m2, 2 * (b.exp2 - e)) : a.m2 + b.m2);
  A mean = a.mean, lo = simd::madd(delta, fraction_b, a.mean_lo);
  renormalize(mean, lo);
  return {n, mean, lo, m2, e};
}

// Biased (population) variance, what the normalization itself uses. Overflows to inf only when the
// true variance is beyond A's range.
template <class A>
A variance(const Moments<A>& m) {
  const A v = m.m2 / static_cast<A>(m.count);
  return m.exp2 ? static_cast<A>(std::ldexp(static_cast<long double>(v), 2 * m.exp2)) : v;
}

// The multiplier applied to (x - mean), from a variance given in long double (any range) and rounded
// once to A.
template <class A>
A rstd_from_var(long double var, double eps, bool eps_inside_sqrt) {
  const long double e = eps;
  return static_cast<A>(eps_inside_sqrt ? 1.0L / std::sqrt(var + e) : 1.0L / (std::sqrt(var) + e));
}

// Backward's variance term. d rstd / d x differs with the placement of eps: inside the sqrt it gives
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); outside, rstd = 1/(sigma + eps) gives
// dx = rstd * (g - mean(g)) - xhat * mean(g * xhat) / sigma. So mean(g * xhat) is multiplied by
// 1/(sigma * rstd) = 1/(1 - eps * rstd), recovered from rstd alone (sigma = 1/rstd - eps). When
// sigma = 0 (rstd = 1/eps) xhat is 0 and the term vanishes: the factor is 0, not 0 * inf.
template <class A>
A variance_term_factor(A rstd, double eps, bool eps_inside_sqrt) {
  if (eps_inside_sqrt) return A(1);
  const double sigma_rstd = simd::madd(-eps, static_cast<double>(rstd), 1.0);
  return std::isfinite(rstd) && sigma_rstd > 0 ? static_cast<A>(1.0 / sigma_rstd) : A(0);
}

// rstd of a block or group, from its moments without leaving long double.
template <class A>
A rstd_from_moments(const Moments<A>& m, double eps, bool eps_inside_sqrt) {
  if (m.exp2 == 0 && std::is_same_v<A, float>) {  // the ordinary case: double is plenty, and faster
    const double m2 = m.m2, n = static_cast<double>(m.count);
    // sqrt(n / (m2 + eps n)) = 1/sqrt(m2/n + eps) with one division instead of two: the divisions
    // and the square root are one latency chain between a row's statistics and its sweep.
    return static_cast<A>(eps_inside_sqrt ? std::sqrt(n / simd::madd(eps, n, m2)) : 1.0 / (std::sqrt(m2 / n) + eps));
  }
  const long double v = static_cast<long double>(m.m2) / static_cast<long double>(m.count);
  return rstd_from_var<A>(m.exp2 ? std::ldexp(v, 2 * m.exp2) : v, eps, eps_inside_sqrt);
}

}  // namespace normkit::core
