// normkit/core/softmax_kernels.hpp — the kernels of softmax, log-softmax and cross-entropy: an
// online max and sum of exponentials along a run or down the columns of a panel, and the sweeps.
//
// Statistics of a group of values x:  M = max x,  S = sum exp(x - M)   (a MaxSum; two of them merge
// as M = max(Ma, Mb), S = Sa exp(Ma - M) + Sb exp(Mb - M)). One pass: the running (max, sum) of
// each lane takes a block of kSoftmaxBlock packets (or rows), rescales its sum by exp(old - new max)
// once per block and adds the block's exponentials, with Kahan compensation. The max starts at the
// lowest finite value, not -Inf, so that -Inf logits add exp(-Inf) = 0 and a row of only -Inf ends
// with S = 0 (then 1/S = Inf and log S = -Inf give NaN, as PyTorch).
// A run that fits the scratch row (tuning::kSoftmaxScratchBytes) takes one exponential per value
// instead: its max first (run_max), then e = exp(x - M) stored and summed (run_exp_sum), and the
// softmax and cross-entropy sweeps scale e.
// Sweeps:  softmax     y = exp(x - M) / S                 (as exp(x - M) * (1/S))
//          log-softmax y = x - M - log S
//          CE dlogits  dx = exp(x - M) * k - beta * w[c]   (k, beta per group; the caller fixes the
//                                                           target's element)
//          backward    softmax dx = y * (dy - sum(dy * y)),  log-softmax dx = dy - exp(y) * sum(dy)
// Inside exponentials x - M is taken exactly, as a rounded difference d plus its rounding error
// (TwoSum), and the error enters as exp(d) * (1 + err): a float difference of logits far apart
// would otherwise cost |x - M| * 2^-24 of relative error in y. Log-softmax's sweep needs no such
// care (log_diff). Every exponential is simd::exp_diff:
// Eigen's packet exp on a packet, the same packet code on a one-value packet for heads and tails, so
// an element gets the same bits in the body and at an edge (where the edges fall depends on the
// output's alignment for streaming stores; a row's values must not).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "col_kernels.hpp"
#include "fusion.hpp"
#include "simd.hpp"
#include "tuning.hpp"

namespace normkit::core {

namespace simd {

// 1.5 * 2^23 + 127: see exp_parts.
inline constexpr float kExpRoundBias = 12583039.0f;
template <class A>
inline constexpr A kExpFlush = std::is_same_v<A, float> ? A(-87.33654475f) : A(-708.3964185322641);  // ln(min normal)

// v where x >= limit or x is NaN, else 0. The exponentials' flush below kExpFlush, written once
// so that the compiler computes the comparison once where two of them meet (exp_diff).
template <class P>
EIGEN_STRONG_INLINE P zero_below(const P& x, const P& limit, const P& v) {
  namespace ei = Eigen::internal;
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (sizeof(P) == 64) {
    if constexpr (std::is_same_v<lane_t<P>, float>)
      return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, limit, _CMP_NLT_UQ), v);
    else return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, limit, _CMP_NLT_UQ), v);
  }
#endif
  return ei::pandnot(v, ei::pcmp_lt(x, limit));
}

// exp(x + err) as scale * (1 + q): scale = 2^n, q = exp(r) - 1 with r = x + err - n ln2 in
// [-ln2/2, ln2/2] (Cody-Waite reduction in two constants, then Cephes' degree-7 fit of exp, the one
// Eigen's pexp uses, written as r + r^2 * p(r)). err (WithErr; at most a few ulps of x: exp_diff's
// rounding error of x - m) joins the small second constant's term, n ln2_lo + err, off the chain,
// and that sum is added to r with one rounding, the one the second reduction step had anyway
// (this replaced exp(x) * (1 + err), two more operations and one more rounding). Keeping the 1
// apart lets the caller fold its own factors into one final rounding. Results below the smallest
// normal are flushed (scale 0); a NaN x gives q NaN. x is clamped to [-88, 88] (softmax only ever
// asks x <= 0). Clamp false (exp_diff's statistics, whose x is never above 0): the packet forms
// neither clamp nor flush, fewer operations on the exponential's dependency chain; their parts are
// then right for x in [kExpFlush, 88] only, and the caller zeroes its result below (a NaN x still
// gives q NaN). P is a packet of float (on AVX-512 written on intrinsics in their zero-masked
// forms: several of Eigen's AVX-512 packet functions carry an _mm512_undefined operand that GCC 12
// reports as maybe-uninitialized, bug 105593), or float itself on targets without SIMD.
template <class P>
struct ExpParts {
  P scale, q;
};
template <bool Clamp = true, bool WithErr = false, class P>
EIGEN_STRONG_INLINE ExpParts<P> exp_parts(const P& x, const P& err = P()) {
  namespace ei = Eigen::internal;
  const auto c = [](float v) { return set1<float>(v); };
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (sizeof(P) == 64) {
    // min and max return their second operand where one is NaN: a NaN x stays NaN through xc, and
    // so in q.
    const __m512 xc = Clamp ? _mm512_maskz_max_ps(0xFFFF, c(-88.0f), _mm512_maskz_min_ps(0xFFFF, c(88.0f), x)) : x;
    // n = xc / ln2 rounded to nearest by adding 1.5 * 2^23 + 127 in the multiply's own rounding:
    // biased lies in [2^23, 2^24), whose ulp is 1, with n + 127 (0 to 254) in its low mantissa bits,
    // which a shift then makes the exponent of 2^n. Two operations fewer than a floor, an
    // integer conversion and an add (the exponential is most of softmax's work).
    const __m512 biased = _mm512_fmadd_ps(xc, c(1.44269504088896341f), c(kExpRoundBias));
    const __m512 n = _mm512_sub_ps(biased, c(kExpRoundBias));
    __m512 r = _mm512_fmadd_ps(n, c(-0.693359375f), xc);
    r = WithErr ? _mm512_add_ps(r, _mm512_fmadd_ps(n, c(2.12194440e-4f), err))
                : _mm512_fmadd_ps(n, c(2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(c(1.9875691500E-4f), r, c(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, c(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, c(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, c(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, c(5.0000001201E-1f));
    const __m512 q = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    const __m512i e = _mm512_maskz_slli_epi32(0xFFFF, _mm512_castps_si512(biased), 23);
    if constexpr (!Clamp) return {_mm512_castsi512_ps(e), q};
    return {zero_below(x, c(kExpFlush<float>), _mm512_castsi512_ps(e)), q};
  }
#endif
  if constexpr (std::is_floating_point_v<P>) {  // no SIMD: the same steps on one float
    const float xc = std::max(std::min(x, 88.0f), -88.0f);
    const float n = std::floor(madd(xc, 1.44269504088896341f, 0.5f));
    float r = madd(n, -0.693359375f, xc);
    r = WithErr ? r + madd(n, 2.12194440e-4f, err) : madd(n, 2.12194440e-4f, r);
    float p = madd(1.9875691500E-4f, r, 1.3981999507E-3f);
    p = madd(p, r, 8.3334519073E-3f);
    p = madd(p, r, 4.1665795894E-2f);
    p = madd(p, r, 1.6666665459E-1f);
    p = madd(p, r, 5.0000001201E-1f);
    const float q = x == x ? madd(p, r * r, r) : x;
    return {x >= kExpFlush<float> ? std::ldexp(1.0f, static_cast<int>(n)) : 0.0f, q};
  } else {
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    // Eigen's SSE, AVX and NEON pmin/pmax return their first operand where one is NaN (x86's
    // instructions take them swapped): a NaN x stays NaN through xc, and so in q.
    const P xc = Clamp ? ei::pmax(ei::pmin(x, c(88.0f)), c(-88.0f)) : x;
    const P biased = ei::pmadd(xc, c(1.44269504088896341f), c(kExpRoundBias));  // as above
    const P n = ei::psub(biased, c(kExpRoundBias));
    P r = ei::pmadd(n, c(-0.693359375f), xc);
    r = WithErr ? ei::padd(r, ei::pmadd(n, c(2.12194440e-4f), err)) : ei::pmadd(n, c(2.12194440e-4f), r);
    P p = ei::pmadd(c(1.9875691500E-4f), r, c(1.3981999507E-3f));
    p = ei::pmadd(p, r, c(8.3334519073E-3f));
    p = ei::pmadd(p, r, c(4.1665795894E-2f));
    p = ei::pmadd(p, r, c(1.6666665459E-1f));
    p = ei::pmadd(p, r, c(5.0000001201E-1f));
    const P q = ei::pmadd(p, ei::pmul(r, r), r);
    const P scale = ei::preinterpret<P>(ei::plogical_shift_left<23>(ei::preinterpret<PI>(biased)));
    if constexpr (!Clamp) return {scale, q};
    return {zero_below(x, c(kExpFlush<float>), scale), q};
  }
}

// exp(x) on a packet of A. double: std::exp lane by lane (double softmax is not where speed matters).
template <class P>
EIGEN_STRONG_INLINE P exp_packet(const P& x) {
  namespace ei = Eigen::internal;
  using A = lane_t<P>;
  if constexpr (std::is_same_v<A, double>) {
    constexpr std::size_t n = ei::unpacket_traits<P>::size;
    A lanes[n];
    ei::pstoreu(lanes, x);
    for (std::size_t i = 0; i < n; ++i) lanes[i] = lanes[i] < kExpFlush<A> ? A(0) : std::exp(lanes[i]);
    return ei::ploadu<P>(lanes);
  } else {
    const ExpParts<P> e = exp_parts(x);
    return ei::pmadd(e.scale, e.q, e.scale);
  }
}

// A sum of float values in [0, 1] (exponentials of x - max) kept in float, each addition's rounding
// error with it, and moved to double (WideSum) every tuning::kUnitSumFlush packets. Each lane's
// sum s starts at 1, so s >= 1 >= t and the rounding error of s + t is exactly t - ((s + t) - s)
// (Dekker's Fast2Sum, which needs |s| >= |t|): four float operations per packet against WideSum's
// widening, whose two conversions cost a fifth of the exponential loop on Zen 4. The errors sum
// in c, whose own roundings are at most (B - 1) 2^-24 of the block's errors (each below half an
// ulp of s, and below t); at every flush s - 1 (exact) and c go to double. On rows built to defeat
// it (constant or tiny terms near ulp(1), up to 2^20 of them) it stayed within 2^-39 of the sum,
// WideSum within 2^-50; a plain float sum was off by up to 2^-9.
struct UnitSum {
  packet<float> s = set1<float>(1.f), c = set1<float>(0.f);
  WideSum wide;
  int count = 0;
  template <class V>  // a packet of float, or one float
  EIGEN_STRONG_INLINE void add(const V& t) {
    if constexpr (std::is_floating_point_v<V>) {
      wide.add(t);
    } else {
      const packet<float> total = simd::add(s, t);
      c = simd::add(c, sub(t, sub(total, s)));
      s = total;
      if (++count == tuning::kUnitSumFlush) flush();
    }
  }
  void flush() {
    wide.add(sub(s, set1<float>(1.f))), wide.add(c);
    s = set1<float>(1.f), c = set1<float>(0.f), count = 0;
  }
};

// t where t != 1 (a NaN included), else 0, adding 1 to `ones` there: exp(x - max) is exactly 1 for
// the values equal to the max, counted apart from the rest (run_exp_sum). Not x == max: a +Inf max
// gives exp(Inf - Inf) = NaN, which must reach the sum.
template <class V>
EIGEN_STRONG_INLINE V count_ones(const V& t, V& ones) {
  namespace ei = Eigen::internal;
  using A = lane_t<V>;
  if constexpr (is_scalar<V>) {
    if (!(t == A(1))) return t;
    ones += A(1);
    return A(0);
  } else {
    const V one = set1<A>(A(1));
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (sizeof(V) == 64 && std::is_same_v<A, float>) {
      ones = _mm512_mask_add_ps(ones, _mm512_cmp_ps_mask(t, one, _CMP_EQ_OQ), ones, one);
      return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, one, _CMP_NEQ_UQ), t);
    }
#endif
    const V is_one = ei::pcmp_eq(t, one);
    ones = ei::padd(ones, ei::pand(is_one, one));
    return ei::pandnot(t, is_one);
  }
}

// exp(x - m) * k * (1 + k_rel) with x - m taken exactly as d + err (err kept where d is at or above
// the flush point, or NaN: the result is NaN there anyway). float: exp(d + err) = scale * (1 + q)
// (exp_parts, err inside the reduced argument), and the result is ks + ks * u, ks = scale * k
// (exact: a power of two times k), u = q + k_rel * (1 + q): the small terms are summed first and
// only one rounding falls on the result. double: exp(d) * k * (1 + err + k_rel).
// Unit: k = 1 and k_rel = 0 (the statistics' exponentials), without the multiply by 1 and the add
// of 0 that the compiler must keep (q + 0 is +0 where q is -0; the result is the same), and with
// the result zeroed below the flush point at the end instead of err and scale before, which takes
// the clamp and a mask off the chain. Not with a k: k may be NaN (a column whose sum is NaN), and
// 0 * k must stay NaN.
template <bool Unit, class P>
EIGEN_STRONG_INLINE P exp_diff_packet(const P& x, const P& m, const P& k, const P& k_rel) {
  namespace ei = Eigen::internal;
  using A = lane_t<P>;
  const P flush = set1<A>(kExpFlush<A>);
  const P d = ei::psub(x, m), bb = ei::psub(d, x);
  P err = ei::padd(ei::psub(x, ei::psub(d, bb)), ei::psub(ei::pnegate(m), bb));
  if constexpr (!Unit) err = zero_below(d, flush, err);
  P r;
  if constexpr (std::is_same_v<A, double>) {
    const P v = Unit ? err : ei::padd(err, k_rel);
    const P ek = Unit ? exp_packet(d) : ei::pmul(exp_packet(d), k);
    r = ei::pmadd(ek, v, ek);
  } else {
    const ExpParts<P> e = exp_parts</*Clamp=*/!Unit, /*WithErr=*/true>(d, err);
    const P ks = Unit ? e.scale : ei::pmul(e.scale, k), u = Unit ? e.q : ei::padd(e.q, ei::pmadd(k_rel, e.q, k_rel));
    r = ei::pmadd(ks, u, ks);
  }
  return Unit ? zero_below(d, flush, r) : r;
}

// e * k * (1 + k_rel): the one-exponential sweep's scaling of a stored exp(x - m), rounded once
// where madd is fused (kFusedMadd; the path is not taken elsewhere).
template <class P>
EIGEN_STRONG_INLINE P scale_rel_packet(const P& e, const P& k, const P& k_rel) {
  namespace ei = Eigen::internal;
  return ei::pmadd(e, k, ei::pmul(ei::pmul(e, k), k_rel));
}

// x - m - (l + l_lo), log-softmax's sweep, with x - m rounded: x <= m and l >= 0 (S >= 1, the max's
// own term), so |y| >= |x - m| and that rounding is at most half an ulp of y, not amplified as it is
// inside an exponential. Three roundings (at most about 3 ulp in theory; over 16 million values of
// eight spreads, 1.27 ulp at most either way, 1.25 against 1.07 on spreads up to 10); taking the
// difference exactly made log-softmax 7-18% slower.
template <class P>
EIGEN_STRONG_INLINE P log_diff_packet(const P& x, const P& m, const P& l, const P& l_lo) {
  namespace ei = Eigen::internal;
  return ei::psub(ei::psub(ei::psub(x, m), l), l_lo);
}

// Lane 0 (not Eigen's pfirst: on AVX-512 it carries the _mm_undefined_ps operand GCC 12 flags).
template <class P>
EIGEN_STRONG_INLINE lane_t<P> first_lane(const P& v) {
#if defined(__GNUC__)
  if constexpr (std::is_floating_point_v<P>) return v;  // no SIMD: the "packet" is one value
  else return v[0];
#else
  lane_t<P> lanes[Eigen::internal::unpacket_traits<P>::size];
  Eigen::internal::pstoreu(lanes, v);
  return lanes[0];
#endif
}

// Over V (packet or one value): one value goes through a packet, so both compute the same function.
template <class V>
EIGEN_STRONG_INLINE V exp(const V& x) {
  if constexpr (is_scalar<V>) return first_lane(exp_packet(set1<V>(x)));
  else return exp_packet(x);
}
template <class V>
EIGEN_STRONG_INLINE V exp_diff(const V& x, const V& m, const V& k, const V& k_rel) {
  if constexpr (is_scalar<V>)
    return first_lane(exp_diff_packet<false>(set1<V>(x), set1<V>(m), set1<V>(k), set1<V>(k_rel)));
  else return exp_diff_packet<false>(x, m, k, k_rel);
}
// exp(x - m), x - m taken exactly: exp_diff with k = 1, k_rel = 0.
template <class V>
EIGEN_STRONG_INLINE V exp_diff(const V& x, const V& m) {
  if constexpr (is_scalar<V>) return first_lane(exp_diff_packet<true>(set1<V>(x), set1<V>(m), set1<V>(x), set1<V>(x)));
  else return exp_diff_packet<true>(x, m, x, x);
}
template <class V>
EIGEN_STRONG_INLINE V scale_rel(const V& e, const V& k, const V& k_rel) {
  if constexpr (is_scalar<V>) return first_lane(scale_rel_packet(set1<V>(e), set1<V>(k), set1<V>(k_rel)));
  else return scale_rel_packet(e, k, k_rel);
}
template <class V>
EIGEN_STRONG_INLINE V log_diff(const V& x, const V& m, const V& l, const V& l_lo) {
  if constexpr (is_scalar<V>) return first_lane(log_diff_packet(set1<V>(x), set1<V>(m), set1<V>(l), set1<V>(l_lo)));
  else return log_diff_packet(x, m, l, l_lo);
}

}  // namespace simd

// The statistics of a group (or part of one): max and sum of exp(x - max). The default is the empty
// group.
// The sum is a pair of doubles, sum + lo (lanes and runs merge in double with the rounding error of
// each addition kept): log-softmax of a dominant value is -log S with S = 1 + tiny, and the tiny part
// must keep its digits through the merges (log S = log(sum) + lo / sum).
template <class A>
struct MaxSum {
  A max = std::numeric_limits<A>::lowest();
  double sum = 0, lo = 0;
};

// sum + lo += v, with the rounding error kept in lo (TwoSum).
inline void add_to(double& sum, double& lo, double v) {
  const double total = sum + v, bb = total - sum;
  lo += (sum - (total - bb)) + (v - bb);
  sum = total;
}

// The group with the larger max keeps its sum; the other's is scaled by exp(its max - that max) and
// added. Merging with the empty group gives the other one bit for bit. A NaN max gives a NaN sum.
template <class A>
MaxSum<A> merge(const MaxSum<A>& a, const MaxSum<A>& b) {
  const bool a_big = a.max >= b.max;
  const MaxSum<A>& big = a_big ? a : b;
  const MaxSum<A>& small = a_big ? b : a;
  MaxSum<A> r = big;
  // the difference of the maxima taken exactly too: a lane or run merged later (the scalar tail of
  // a row, another chunk of a column) holds terms as small as those summed in the lanes
  const double e = double(simd::exp_diff(small.max, big.max));
  if (small.sum != 0 || e != e) add_to(r.sum, r.lo, (small.sum + small.lo) * e);
  return r;
}

namespace detail {

// s + c += t, the rounding error of s + t kept in c (TwoSum).
template <class V>
EIGEN_STRONG_INLINE void two_sum_into(V& s, V& c, const V& t) {
  using namespace simd;
  const V total = simd::add(s, t), bb = sub(total, s);
  c = simd::add(c, simd::add(sub(s, sub(total, bb)), sub(t, bb)));
  s = total;
}

// The running max m of lanes of V, with `acc` running sums s[a] and compensations c[a] (the sum is
// s + c), takes one block of K values of V; value k goes to sum k % acc, and every sum is rescaled
// to the new max. Several sums keep their TwoSum chains independent (one sum chains three
// dependent adds per value, and the pass waited on them); a panel's strips are independent
// already and use one.
template <class V, std::size_t K>
EIGEN_STRONG_INLINE void online_add(V& m, V* s, V* c, std::size_t acc, const V (&x)[K]) {
  using namespace simd;
  V mb = m;
  for (std::size_t k = 0; k < K; ++k) mb = max(mb, x[k]);
  // differences to the max taken exactly (exp_diff): log-softmax of the max value is -log S, and
  // S - 1 must keep the digits of its small terms
  const V e = exp_diff(m, mb);
  for (std::size_t a = 0; a < acc; ++a) s[a] = mul(s[a], e), c[a] = mul(c[a], e);
  V t[K];
  for (std::size_t k = 0; k < K; ++k) t[k] = exp_diff(x[k], mb);
  // value by value, compensated: the max's 1 may follow tiny ones
  for (std::size_t k = 0; k < K; ++k) two_sum_into(s[k % acc], c[k % acc], t[k]);
  m = mb;
}

// The lanes of (m, s + c) as one MaxSum.
template <class V>
MaxSum<simd::lane_t<V>> online_reduce(const V& m, const V& s, const V& c) {
  using A = simd::lane_t<V>;
  using namespace simd;
  if constexpr (is_scalar<V>) {
    MaxSum<A> r{m, double(s), 0};
    add_to(r.sum, r.lo, double(c));
    return r;
  } else {
    constexpr std::size_t n = Eigen::internal::unpacket_traits<V>::size;
    const A top = max_lane(m);
    A ls[n], lc[n], le[n];
    storev(ls, s), storev(lc, c), storev(le, exp_diff(m, set1<A>(top)));
    MaxSum<A> r{top, 0, 0};
    for (std::size_t l = 0; l < n; ++l) {
      add_to(r.sum, r.lo, double(ls[l]) * double(le[l]));
      add_to(r.sum, r.lo, double(lc[l]) * double(le[l]));
    }
    return r;
  }
}

}  // namespace detail

// MaxSum of a run of n values.
template <class A, class Load>
MaxSum<A> run_max_sum(Load x, Index n) {
  using namespace simd;
  constexpr Index W = width<A>;
  constexpr std::size_t B = tuning::kSoftmaxBlock;
  const auto block = [&](Index i, auto count, auto& m, auto* s, auto* c, std::size_t acc) {
    using V = std::decay_t<decltype(m)>;
    constexpr std::size_t K = decltype(count)::value;
    constexpr Index L = lanes<V>;
    V v[K];
    for (std::size_t k = 0; k < K; ++k) v[k] = x.template load<V>(i + Index(k) * L);
    detail::online_add(m, s, c, acc, v);
  };
  const A lowest = std::numeric_limits<A>::lowest();
  packet<A> m = set1<A>(lowest), s[B], c[B];
  for (std::size_t a = 0; a < B; ++a) s[a] = set1<A>(A(0)), c[a] = s[a];
  Index i = 0;
  for (; i + Index(B) * W <= n; i += Index(B) * W) block(i, std::integral_constant<std::size_t, B>{}, m, s, c, B);
  for (; i + W <= n; i += W) block(i, std::integral_constant<std::size_t, 1>{}, m, s, c, B);  // rescales all B
  A tm = lowest, ts = A(0), tc = A(0);
  for (; i < n; ++i) block(i, std::integral_constant<std::size_t, 1>{}, tm, &ts, &tc, 1);
  for (std::size_t a = 1; a < B; ++a)  // the sums share the max: fold them into the first
    detail::two_sum_into(s[0], c[0], s[a]), c[0] = simd::add(c[0], c[a]);
  return merge(detail::online_reduce(m, s[0], c[0]), detail::online_reduce(tm, ts, tc));
}

// The max of a run: the first pass of the one-exponential softmax (below). Four running maxima
// keep the loads independent. A NaN may be dropped here; its exponential is NaN and so is the sum.
template <class A, class Load>
A run_max(Load x, Index n) {
  using namespace simd;
  constexpr Index W = width<A>;
  const A lowest = std::numeric_limits<A>::lowest();
  packet<A> m[4];
  for (int j = 0; j < 4; ++j) m[j] = set1<A>(lowest);
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W)
    for (int j = 0; j < 4; ++j) m[j] = max(m[j], x.template load<packet<A>>(i + j * W));
  for (; i + W <= n; i += W) m[0] = max(m[0], x.template load<packet<A>>(i));
  A r = max_lane(max(max(m[0], m[1]), max(m[2], m[3])));
  for (; i < n; ++i) r = max(r, x.template load<A>(i));
  return r;
}

// A float run's MaxSum from its sums in double: S = start + the parts, each addition's rounding
// error kept (MaxSum::lo).
inline MaxSum<float> wide_max_sum(const simd::WideSum& sum, float m, double start) {
  double parts[simd::WideSum::kParts];
  sum.store(parts);
  MaxSum<float> r{m, start, 0};
  for (double v : parts) add_to(r.sum, r.lo, v);
  return r;
}
// (UnitSum: its last block flushed to double first.)
inline MaxSum<float> wide_max_sum(simd::UnitSum& sum, float m, double start) {
  sum.flush();
  return wide_max_sum(sum.wide, m, start);
}

// sum e = exp(x - m) in double, the values equal to 1 counted apart and added first: S = count +
// rest with rest's rounding error kept (MaxSum::lo), for rest far below 1 (run_exp_sum). e as kept
// by run_exp_sum, or null: taken again from x.
template <class Load>
MaxSum<float> sum_ones_apart(Load x, const float* e, Index n, float m) {
  using namespace simd;
  WideSum rest;
  packet<float> ones = set1<float>(0.f);
  float tail_ones = 0.f;
  const Splat<float> top(m);
  for_lanes<float>(n, [&](Index i, auto lane) NORMKIT_LANE {
    using V = decltype(lane);
    const V t = e ? loadv<V>(e + i) : exp_diff(x.template load<V>(i), as<V>(top));
    if constexpr (is_scalar<V>) rest.add(count_ones(t, tail_ones));
    else rest.add(count_ones(t, ones));
  });
  return wide_max_sum(rest, m, double(simd::sum(ones)) + double(tail_ones));  // a count: exact
}

// The one-exponential softmax of a run, for runs whose values fit in cache: with the run's max m
// known first (run_max), e = exp(x - m) is taken once, written to e (a scratch row) and summed, and
// the sweep may scale e by 1/S instead of taking the exponential again (softmax_sweep_run). The
// cost is one more rounding per value (e stored as A before the scaling): float's measured maximum
// against float64 went from 1.71 to 1.73 ulp (AVX2, NEON); without FMA the scaling rounds twice
// and reached 2.61 (x86-64-v2), so only targets with a fused madd scale e.
// Float sums in double (WideSum). S = 1 + rest, the max's own term being exactly 1: a lane adding
// tiny terms to that 1 loses up to 2^-53 each, up to n * 2^-53 of rest in all. Log-softmax's
// -log S and cross-entropy's loss log S of a dominant value are made of rest's digits, so with
// ExactRest a row whose rest is below n * 2^-23 (where that loss could exceed 2^-30 of rest: a
// confident prediction) is summed again with the ones counted apart (sum_ones_apart): a pass over
// the cached e without exponentials, or over x with them where e was not kept. Softmax's 1/S needs
// no more than the first sum.
// e null: the exponentials are not kept (log-softmax's sweep takes none, nor does a sweep without
// FMA): half a row of stores fewer, and the row alone in cache for the sweep (a 501 KiB row and its
// 501 KiB of exponentials filled a 1 MiB L2).
template <class A, bool ExactRest = false, class Load>
MaxSum<A> run_exp_sum(Load x, Index n, A m, A* e) {
  using namespace simd;
  constexpr Index W = width<A>;
  const Splat<A> top(m);
  const auto exp_at = [&](Index i, auto lane) NORMKIT_LANE {
    using V = decltype(lane);
    const V t = exp_diff(x.template load<V>(i), as<V>(top));
    if (e) storev(e + i, t);
    return t;
  };
  if constexpr (std::is_same_v<A, float>) {
    std::conditional_t<ExactRest, WideSum, UnitSum> sum;
    for_lanes<A>(n, [&](Index i, auto lane) NORMKIT_LANE { sum.add(exp_at(i, lane)); });
    const MaxSum<A> r = wide_max_sum(sum, m, 0);
    // a NaN sum fails the test too, and stays NaN
    if (ExactRest && !(r.sum - 1 >= double(n) * 0x1p-23)) return sum_ones_apart(x, e, n, m);
    return r;
  } else {  // double: tuning::kSoftmaxExpSums compensated sums (they keep 1 + rest's digits)
    constexpr int K = tuning::kSoftmaxExpSums;
    packet<A> s[K], c[K];
    for (int j = 0; j < K; ++j) s[j] = set1<A>(A(0)), c[j] = s[j];
    Index i = 0;
    for (; i + K * W <= n; i += K * W)
      for (int j = 0; j < K; ++j) detail::two_sum_into(s[j], c[j], exp_at(i + j * W, packet<A>{}));
    A ts = A(0), tc = A(0);
    for (; i < n; ++i) detail::two_sum_into(ts, tc, exp_at(i, A{}));
    for (int j = 1; j < K; ++j) detail::two_sum_into(s[0], c[0], s[j]), c[0] = simd::add(c[0], c[j]);
    // every lane's max is m: online_reduce scales each lane by exp(m - m) = 1
    MaxSum<A> r = detail::online_reduce(set1<A>(m), s[0], c[0]);
    add_to(r.sum, r.lo, double(ts)), add_to(r.sum, r.lo, double(tc));
    return r;
  }
}

// out[c] = merge(out[c], MaxSum of column c over `rows` rows), element (r, c) at r * stride + c.
template <class A, class Load>
void cols_max_sum(Load x, Index rows, Index cols, Index stride, MaxSum<A>* out) {
  using namespace simd;
  constexpr Index B = tuning::kSoftmaxBlock;
  // One block of all the rows: the running max and sum stay in registers and are finished once.
  for_strips<A>(rows, cols, std::max<Index>(rows, 1), /*fetching=*/false,
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;
    V m[N], s[N], cc[N];
    for (std::size_t j = 0; j < N; ++j)
      m[j] = splat<V>(std::numeric_limits<A>::lowest()), s[j] = splat<V>(A(0)), cc[j] = s[j];
    const auto block = [&](Index r, auto count) {
      constexpr std::size_t K = decltype(count)::value;
      for (Index j = 0; j < S; ++j) {
        V v[K];
        for (std::size_t k = 0; k < K; ++k) v[k] = x.template load<V>((r + Index(k)) * stride + c + j * L);
        detail::online_add(m[j], &s[j], &cc[j], 1, v);
      }
    };
    Index r = r0;
    for (; r + B <= r1; r += B) block(r, std::integral_constant<std::size_t, std::size_t(B)>{});
    for (; r < r1; ++r) block(r, std::integral_constant<std::size_t, 1>{});
    constexpr std::size_t NL = std::size_t(L);
    for (Index j = 0; j < S; ++j) {
      A lm[NL], ls[NL], lc[NL];
      storev(lm, m[j]), storev(ls, s[j]), storev(lc, cc[j]);
      for (std::size_t l = 0; l < NL; ++l) {
        MaxSum<A> col{lm[l], double(ls[l]), 0};
        add_to(col.sum, col.lo, double(lc[l]));
        out[c + j * L + Index(l)] = merge(out[c + j * L + Index(l)], col);
      }
    }
  });
}

// What a sweep writes.
enum class SoftmaxSweep { Softmax, LogSoftmax, CrossEntropy };

// Per-group coefficients of the forward sweeps: max; k = 1/S (softmax), log S (log-softmax), or the
// probability's factor (cross-entropy), rounded, and k_lo its rounding error: relative (k_lo / k)
// for the exp sweeps, absolute for log-softmax; beta the class-weight term (cross-entropy).
template <class A>
struct SoftmaxCoef {
  A max = A(0), k = A(0), k_lo = A(0), beta = A(0);
};

// The sweep of one run: y[i] from x[i] (w: cross-entropy's class weights, per element; may be null;
// e: exp(x - max) per element from run_exp_sum, or null: taken here). next (0: none): the run at
// x + next is read next and is prefetched into L2 meanwhile (as normalize_runs does).
template <SoftmaxSweep Mode, class A, class Load, class Store, class P>
void softmax_sweep_run(Load x, Store y, Index n, const SoftmaxCoef<A>& c, const P* w, const A* e, bool stream,
                       Index next) {
  using namespace simd;
  const Splat<A> m(c.max), k(c.k), k_lo(c.k_lo), neg_beta(-c.beta);
  for_stream_lanes<A>(n, stream_span<A>(y.base(), n, stream), [&](Index i, auto lane, auto streamed) NORMKIT_LANE {
    using V = decltype(lane);
    if constexpr (!is_scalar<V>)
      if (next) x.prefetch(next + i);
    if constexpr (Mode == SoftmaxSweep::LogSoftmax) {
      y.store(i, log_diff(x.template load<V>(i), as<V>(m), as<V>(k), as<V>(k_lo)), streamed);
    } else {
      const V p = e ? scale_rel(loadv<V>(e + i), as<V>(k), as<V>(k_lo))
                    : exp_diff(x.template load<V>(i), as<V>(m), as<V>(k), as<V>(k_lo));
      if constexpr (Mode == SoftmaxSweep::Softmax) y.store(i, p, streamed);
      else y.store(i, w ? madd(loadv<V>(w + i), as<V>(neg_beta), p) : add(p, as<V>(neg_beta)), streamed);
    }
  });
}

// The sweep of a panel: column c with coefficients c[c], class weight w[r] per row (may be null).
template <SoftmaxSweep Mode, class A, class Load, class Store, class P>
void softmax_sweep_cols(Load x, Store y, Index rows, Index cols, Index stride, const A* max, const A* k, const A* k_lo,
                        const A* neg_beta, const P* w, bool stream) {
  using namespace simd;
  for_strips<A>(rows, cols,
                strip_block_rows<A, typename Load::value_type>(rows, cols, stride, Load::arrays + Store::arrays),
                /*fetching=*/false,
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;
    V m[N], kk[N], kl[N], nb[N];
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * L;
      m[j] = loadv<V>(max + at), kk[j] = loadv<V>(k + at), kl[j] = loadv<V>(k_lo + at), nb[j] = loadv<V>(neg_beta + at);
    }
    for (Index r = r0; r < r1; ++r) {
      const V wr = splat<V>(w ? load_scalar<A>(w + r) : A(1));
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        const V xv = x.template load<V>(at);
        if constexpr (Mode == SoftmaxSweep::LogSoftmax) {
          y.store(at, log_diff(xv, m[j], kk[j], kl[j]), stream);
        } else {
          const V p = exp_diff(xv, m[j], kk[j], kl[j]);
          if constexpr (Mode == SoftmaxSweep::Softmax) y.store(at, p, stream);
          else y.store(at, madd(wr, nb[j], p), stream);
        }
      }
    }
  });
}

// Backward. Softmax: s = sum(dy * y), dx = y * (dy - s). LogSoftmax: s = sum(dy), dx = dy - exp(y) * s.
template <bool Softmax, class A, class T>
A run_grad_sum(const T* y, const T* dy, Index n) {
  using namespace simd;
  constexpr Index W = width<A>;
  const auto step = [&](Index i, auto& acc) {
    using V = std::decay_t<decltype(acc)>;
    if constexpr (Softmax) acc = madd(loadv<V>(dy + i), loadv<V>(y + i), acc);
    else acc = add(acc, loadv<V>(dy + i));
  };
  packet<A> a[4];
  for (int j = 0; j < 4; ++j) a[j] = set1<A>(A(0));
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W)
    for (int j = 0; j < 4; ++j) step(i + j * W, a[j]);
  for (; i + W <= n; i += W) step(i, a[0]);
  A r = simd::sum(add(add(a[0], a[1]), add(a[2], a[3])));
  for (; i < n; ++i) step(i, r);
  return r;
}

template <bool Softmax, class A, class T>
void cols_grad_sum(const T* y, const T* dy, Index rows, Index cols, Index stride, A* out) {
  using namespace simd;
  for_strips<A>(rows, cols, strip_block_rows<A, T>(rows, cols, stride, 2), /*fetching=*/false,
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;
    V a[N];
    for (Index j = 0; j < S; ++j) a[j] = loadv<V>(out + c + j * L);
    for (Index r = r0; r < r1; ++r)
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        if constexpr (Softmax) a[j] = madd(loadv<V>(dy + at), loadv<V>(y + at), a[j]);
        else a[j] = add(a[j], loadv<V>(dy + at));
      }
    for (Index j = 0; j < S; ++j) storev(out + c + j * L, a[j]);
  });
}

template <bool Softmax, class V>
EIGEN_STRONG_INLINE V grad_value(const V& y, const V& dy, const V& s) {
  using namespace simd;
  if constexpr (Softmax) return mul(y, sub(dy, s));
  else return madd(Eigen::internal::pnegate(exp(y)), s, dy);
}

template <bool Softmax, class A, class T, class Store>
void grad_sweep_run(const T* y, const T* dy, Store dx, Index n, A s, bool stream) {
  using namespace simd;
  const Splat<A> sum(s);
  for_stream_lanes<A>(n, stream_span<A>(dx.base(), n, stream), [&](Index i, auto lane, auto streamed) NORMKIT_LANE {
    using V = decltype(lane);
    dx.store(i, grad_value<Softmax>(loadv<V>(y + i), loadv<V>(dy + i), as<V>(sum)), streamed);
  });
}

template <bool Softmax, class A, class T, class Store>
void grad_sweep_cols(const T* y, const T* dy, Store dx, Index rows, Index cols, Index stride, const A* s, bool stream) {
  using namespace simd;
  for_strips<A>(rows, cols, strip_block_rows<A, T>(rows, cols, stride, 2 + Store::arrays), /*fetching=*/false,
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;
    V sum[N];
    for (Index j = 0; j < S; ++j) sum[j] = loadv<V>(s + c + j * L);
    for (Index r = r0; r < r1; ++r)
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        dx.store(at, grad_value<Softmax>(loadv<V>(y + at), loadv<V>(dy + at), sum[j]), stream);
      }
  });
}

}  // namespace normkit::core
