// normkit/core/stats.hpp — the statistics of a run or of the columns of a panel: the forward math.
//
// Statistics of a group come from one pass over it in cache-sized pieces, around a shift taken from
// its start (a run: its first packet; a column of a panel: its first block of rows), and a second
// pass only where that shift proves poor; runs of one group are merged with Chan's update
// (moments.hpp). Data is read through a load prologue (fusion.hpp), so a fused input (x + alpha * r)
// has its statistics taken without being stored first.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "col_kernels.hpp"
#include "fusion.hpp"
#include "moments.hpp"
#include "row_kernels.hpp"
#include "tuning.hpp"

namespace normkit::core {
namespace detail {
// Column panels: at most kMaxPanel columns (tuning.hpp), so per-column state fits on the stack.
// The stack arrays take their bound from a std::size_t copy (constexpr std::size_t kPanel): GCC's
// -Wsign-conversion flags a signed bound that depends on a template parameter.
template <class A>
inline constexpr Index kMaxPanel = tuning::kMaxPanelPackets* simd::width<A>;

// Rows per block of a column panel: the block is swept twice and should stay in L1/L2 meanwhile.
template <class T>
Index panel_block_rows(Index cols) {
  return std::max<Index>(1, tuning::kPanelBlockBytes / (cols * Index(sizeof(T))));
}

// The rstd of a group; NaN or Inf in the group (non-finite moments) poisons the whole group.
template <class A>
A group_rstd(const Moments<A>& m, double eps, bool eps_inside_sqrt) {
  if (!std::isfinite(m.mean) || !std::isfinite(m.mean_lo) || !std::isfinite(m.m2))
    return std::numeric_limits<A>::quiet_NaN();
  return rstd_from_moments(m, eps, eps_inside_sqrt);
}

// The shift of the second pass: the first pass's mean rounded to a multiple of T's ulp at the
// block's root mean square (when known: rms > 0). Then x - shift is exact for every x of that
// magnitude or above (for bfloat16/half data always, they have at most 11 significant bits, and
// the partial sums of the second pass stay exact too), so sum(x - shift) is not biased by the same
// rounding of a long shift repeated in every term. That bias reached 1e-7 of the std for 16-bit
// rows with a mean near 0, several ulps on outputs near 0. Near the mean (|mean| >> std) the shift
// is the mean rounded to T, as accurate as the data can say.
// For float accumulation the same rounding runs in double with the exponents read from the bits:
// frexp and ldexp are library calls, and this runs once per row (~4% of LayerNorm forward in cache).
// float's range and T's digits keep every power of two involved a normal double, and the result
// (a multiple of 2^ulp_exp no larger than rms, or mean0 itself) converts back to float exactly.
template <class T, class A>
A second_pass_shift(A mean0, A rms) {
  if (!(rms > A(0)) || !std::isfinite(rms)) return static_cast<A>(static_cast<T>(mean0));
  if constexpr (std::is_same_v<A, float>) {
    const auto pow2 = [](int k) {  // 2^k for |k| < 1023
      const std::uint64_t bits = static_cast<std::uint64_t>(k + 1023) << 52;
      double p;
      std::memcpy(&p, &bits, sizeof p);
      return p;
    };
    std::uint64_t bits;
    const double r = rms;
    std::memcpy(&bits, &r, sizeof bits);
    const int ulp_exp = static_cast<int>((bits >> 52) & 0x7ff) - 1022 - std::numeric_limits<T>::digits;
    return static_cast<A>(std::nearbyint(static_cast<double>(mean0) * pow2(-ulp_exp)) * pow2(ulp_exp));
  } else {
    int e = 0;
    std::frexp(rms, &e);
    const int ulp_exp = e - std::numeric_limits<T>::digits;
    return std::ldexp(std::nearbyint(std::ldexp(mean0, -ulp_exp)), ulp_exp);
  }
}

// bfloat16 and half rows also sum squares in the first pass (or run_one_pass's first packet), for
// second_pass_shift's rms: their coarse values make the bias above likely. Wider types keep the
// cheaper sum-only pass and a shift rounded to T only (a float data row's mean in cache: one
// horizontal sum and a square root fewer on the latency chain at the start of every row).
template <class T, class A>
inline constexpr bool first_pass_squares = sizeof(T) < sizeof(A);

// Two passes over a run whose values are taken as x * 2^-exp2 (exp2 = 0: as they are).
template <class A, class Load>
Moments<A> run_two_pass(Load run, Index n, bool centered, int exp2) {
  using T = typename Load::value_type;
  const A scale = exp2 ? std::ldexp(A(1), -exp2) : A(1);
  Moments<A> m;
  if (centered) {
    A mean0, rms = 0;
    if constexpr (first_pass_squares<T, A>) {
      const Sums<A> raw = run_sums(run, n, A(0), scale);
      mean0 = raw.s1 / static_cast<A>(n), rms = std::sqrt(raw.s2 / static_cast<A>(n));
    } else {
      mean0 = run_sum(run, n, scale) / static_cast<A>(n);
    }
    mean0 = second_pass_shift<T>(mean0, rms);
    m = moments_from_sums(n, mean0, run_sums(run, n, mean0, scale));
  } else {
    m = {n, A(0), A(0), run_sum_squares(run, n, scale)};
  }
  if (exp2) m.mean = std::ldexp(m.mean, exp2), m.mean_lo = std::ldexp(m.mean_lo, exp2), m.exp2 = exp2;
  return m;
}

// One pass around a shift taken from the run's first packet (its mean, rounded as
// second_pass_shift rounds; the first value for runs shorter than a packet). The sums around any
// shift give the mean as exactly as the two-pass form does; m2 = s2 - s1 * s1/n loses
// log2(1 + n d^2 / m2) bits to cancellation, d = mean - shift. For ordinary rows the first packet's
// mean is within std/4 of the row's (a few hundredths of a bit); false when n d^2 > m2 (more than
// 1 bit: a trend along the row, an outlier in the first packet, NaN), and the caller then takes a
// second pass around the mean found here. Rows in cache so take two sweeps before the normalize
// sweep instead of three.
template <class A, class Load>
bool run_one_pass(Load run, Index n, Moments<A>& m) {
  using T = typename Load::value_type;
  constexpr Index W = simd::width<A>;
  A shift = run.template load<A>(0);
  if (n >= W) {
    const simd::packet<A> v = run.template load<simd::packet<A>>(0);
    const A rms = first_pass_squares<T, A> ? std::sqrt(simd::sum(simd::mul(v, v)) / A(W)) : A(0);
    shift = second_pass_shift<T>(simd::sum(v) / A(W), rms);
  }
  const Sums<A> sums = run_sums(run, n, shift);
  const A d = sums.s1 / static_cast<A>(n);
  m = moments_from_sums(n, shift, sums);
  return static_cast<A>(n) * d * d <= m.m2;
}

// Whether a block's sums may have overflowed, or lost digits to underflow in the squares. Underflow
// needs tiny deviations from a tiny mean: deviations from a mean of ordinary size are at least an
// ulp of it, whose square is still a normal number. So constant rows stay on the fast path.
template <class A>
bool in_range(const Moments<A>& m) {
  const A tiny_m2 = std::numeric_limits<A>::min() * A(1 << 26);
  const A small_mean = std::sqrt(std::numeric_limits<A>::min()) / std::numeric_limits<A>::epsilon();
  return std::isfinite(m.mean) && std::isfinite(m.m2) &&
         (m.m2 >= tiny_m2 * static_cast<A>(m.count) || std::abs(m.mean) >= small_mean);
}

// The moments of one contiguous run: one pass while it sits in cache (two when the first packet was
// a poor shift), and two more on scaled data when those left the range (moments.hpp; never for
// ordinary data).
template <class A, class Load, if_fusion<Load> = 0>
Moments<A> run_moments(Load run, Index n, bool centered) {
  using T = typename Load::value_type;
  Moments<A> m;
  if (!centered) {
    m = run_two_pass<A>(run, n, /*centered=*/false, 0);  // one pass: sum of squares
  } else if (!run_one_pass(run, n, m)) {
    const A mean = m.mean + m.mean_lo, rms = std::sqrt(simd::madd(mean, mean, m.m2 / static_cast<A>(n)));
    const A shift = second_pass_shift<T>(mean, rms);
    m = moments_from_sums(n, shift, run_sums(run, n, shift));
  }
  // Every path returns m itself: built in the caller's return slot, m is not copied out. (With a
  // temporary also returned, g++ copied m out of the stack with 8- and 16-byte loads of fields just
  // stored as 4-byte floats, loads that cannot be forwarded from those stores and wait for them.)
  if (in_range(m)) return m;
  const A top = run_max_abs<A>(run, n);
  if (!(top > A(0)) || !std::isfinite(top)) return m;  // all zeros, or Inf/NaN in the run: m says so
  int exp2 = 0;
  std::frexp(top, &exp2);
  m = run_two_pass<A>(run, n, centered, std::max(exp2, std::numeric_limits<A>::min_exponent - 1));
  return m;
}

// Each column's second-pass shift from rows [0, rows) of a panel: their mean, rounded as
// second_pass_shift rounds it (one pass of sums and squares). fetch_rows: as cols_sums.
template <class A, class Load>
void cols_shift(Load x, Index rows, Index cols, Index stride, A* shift, Index fetch_rows) {
  using T = typename Load::value_type;
  constexpr std::size_t kPanel = kMaxPanel<A>;
  A zero[kPanel] = {}, s1[kPanel] = {}, s2[kPanel] = {};
  cols_sums(x, rows, cols, stride, zero, s1, s2, fetch_rows);
  for (Index c = 0; c < cols; ++c)
    shift[c] = second_pass_shift<T>(s1[c] / static_cast<A>(rows), std::sqrt(s2[c] / static_cast<A>(rows)));
}

// The moments of rows [0, rows) of a column panel, in blocks of `block` rows: two passes per block,
// merged with Chan's update, a column of a block that leaves the range redone as a contiguous run.
// The robust form; panel_moments falls back to it for the columns its one pass cannot vouch for.
// Columns are independent: a column gives the same bits alone as within a panel.
template <class A, class Load, if_fusion<Load> = 0>
void panel_moments_blocked(Load x, Index rows, Index cols, Index stride, Index block, bool centered, Moments<A>* m) {
  using T = typename Load::value_type;
  constexpr std::size_t kPanel = kMaxPanel<A>;
  A mean0[kPanel] = {}, s1[kPanel], s2[kPanel];  // mean0 stays 0 without centering: one pass
  for (Index r0 = 0; r0 < rows; r0 += block) {
    const Index rb = std::min(block, rows - r0);
    const Load xb = x.at(r0 * stride);
    if (centered) cols_shift(xb, rb, cols, stride, mean0, Index(0));  // no prefetch: a redo, in cache
    std::fill(s1, s1 + cols, A(0));
    std::fill(s2, s2 + cols, A(0));
    cols_sums(xb, rb, cols, stride, mean0, s1, s2);
    for (Index c = 0; c < cols; ++c) {
      Moments<A> b = centered ? moments_from_sums(rb, mean0[c], Sums<A>{s1[c], s2[c]})
                              : Moments<A>{rb, A(0), A(0), s2[c]};
      if (!in_range(b)) {  // rare: redo this column of the block as a contiguous run
        std::vector<T> column(static_cast<std::size_t>(rb));
        for (Index r = 0; r < rb; ++r)
          column[static_cast<std::size_t>(r)] = static_cast<T>(xb.template load<A>(r * stride + c));
        b = run_moments<A>(LoadX<T>{column.data()}, rb, centered);
      }
      m[c] = merge(m[c], b);
    }
  }
}

// Merges the moments of rows [0, rows) of a column panel into m[0..cols). One pass over the panel,
// as run_one_pass does for a run: every column is summed around one shift, the mean of its first
// block (rounded as second_pass_shift rounds), so the block sums simply add up (two-level
// summation: block, then panel) and each column is finished once, not once per block. The first
// block is read twice, from cache. A column whose shift was poor (n d^2 > m2, d = mean - shift: a
// trend down the column), whose sums left the range, or that holds NaN/Inf is computed again by
// panel_moments_blocked; for ordinary data that never happens (the first block's mean is within
// std / sqrt(block rows) of the column's, unless the column drifts by more than a std). A constant
// column of zeros (a dead channel) is one of them, as in_range cannot tell it from underflowed
// squares: when few columns fail they are redone one by one, so that one such column does not
// cost the whole panel two more passes.
template <class A, class Load, if_fusion<Load> = 0>
void panel_moments(Load x, Index rows, Index cols, Index stride, bool centered, Moments<A>* m, Index fetch_rows = 0) {
  using T = typename Load::value_type;
  constexpr std::size_t kPanel = kMaxPanel<A>;
  if (rows == 0) return;
  A shift[kPanel] = {}, s1[kPanel] = {}, s2[kPanel] = {}, b1[kPanel], b2[kPanel];
  const Index block = panel_block_rows<T>(cols);
  // fetch_rows: the rows from the first that may be prefetched (the rest of the caller's walk, at
  // least `rows`; 0: none), so that each block prefetches on into the next (col_kernels.hpp).
  if (centered) cols_shift(x, std::min(block, rows), cols, stride, shift, fetch_rows);
  for (Index r0 = 0; r0 < rows; r0 += block) {
    std::fill(b1, b1 + cols, A(0));
    std::fill(b2, b2 + cols, A(0));
    cols_sums(x.at(r0 * stride), std::min(block, rows - r0), cols, stride, shift, b1, b2,
              fetch_rows ? fetch_rows - r0 : 0);
    for (Index c = 0; c < cols; ++c) s1[c] += b1[c], s2[c] += b2[c];
  }
  Index redo = 0;
  Moments<A> panel[kPanel];
  for (Index c = 0; c < cols; ++c) {
    Moments<A>& pm = panel[c];
    pm = centered ? moments_from_sums(rows, shift[c], Sums<A>{s1[c], s2[c]}) : Moments<A>{rows, A(0), A(0), s2[c]};
    const A d = s1[c] / static_cast<A>(rows);
    const bool good_shift = !centered || static_cast<A>(rows) * d * d <= pm.m2;  // false for NaN too
    if (!good_shift || !in_range(pm)) pm = Moments<A>{}, ++redo;
  }
  if (redo * 8 > cols) {
    Moments<A> robust[kPanel];
    panel_moments_blocked(x, rows, cols, stride, block, centered, robust);
    for (Index c = 0; c < cols; ++c)
      if (panel[c].count == 0) panel[c] = robust[c];
  } else if (redo) {
    for (Index c = 0; c < cols; ++c)
      if (panel[c].count == 0) panel_moments_blocked(x.at(c), rows, Index(1), stride, block, centered, &panel[c]);
  }
  for (Index c = 0; c < cols; ++c) m[c] = merge(m[c], panel[c]);
}

// The same on plain pointers.
template <class A, class T>
Moments<A> run_moments(const T* run, Index n, bool centered) {
  return run_moments<A>(LoadX<T>{run}, n, centered);
}
template <class A, class T>
void panel_moments(const T* x, Index rows, Index cols, Index stride, bool centered, Moments<A>* m,
                   Index fetch_rows = 0) {
  panel_moments(LoadX<T>{x}, rows, cols, stride, centered, m, fetch_rows);
}
template <class A, class T>
void panel_moments_blocked(const T* x, Index rows, Index cols, Index stride, Index block, bool centered,
                           Moments<A>* m) {
  panel_moments_blocked(LoadX<T>{x}, rows, cols, stride, block, centered, m);
}

}  // namespace detail
}  // namespace normkit::core
