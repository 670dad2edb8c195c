// normkit/core/groups.hpp — forward and backward over a tensor seen as [outer][groups][inner].
//
// Every layer is a set of groups normalized independently: element (o, g, i) of a dense buffer sits
// at (o * groups + g) * inner + i, and group g holds outer * inner values.
//   LayerNorm/RMSNorm, RowMajor : [1][rows][features]      -> one contiguous run per group
//   LayerNorm/RMSNorm, ColMajor : [features][rows][1]      -> a column per group
//   BatchNorm, channel axis 1   : [N][C][H*W]              -> N runs per group (RowMajor)
//   BatchNorm, channels-last    : [N*H*W][C][1]            -> a column per group
// So two shapes cover everything: inner > 1 runs the row kernels run by run, inner == 1 runs the
// column kernels on panels of columns. The weight and bias are either per element of a group
// (AffineAxis::Element, index o * inner + i: LayerNorm, RMSNorm) or per group (AffineAxis::Group:
// BatchNorm, folded into the per-group scale and shift).
// Statistics of a group come from one pass over it in cache-sized pieces, around a shift taken from
// its start (a run: its first packet; a column of a panel: its first block of rows), and a second
// pass only where that shift proves poor; runs of one group are merged with Chan's update
// (moments.hpp). The normalize or dx sweep then follows while the data is still in cache where the
// group is small enough.
// Work is cut into chunks of groups (row shape), of column packets (wide column shapes), or of rows
// (narrow column shapes such as channels-last BatchNorm, whose per-chunk moments or sums are merged
// in chunk order). The chunk count follows from the shape alone (parallel.hpp), so no result
// depends on the thread count: a row's outputs depend on that row only, and what crosses chunks
// (parameter gradients, a narrow column's statistics) is merged in a fixed order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "col_kernels.hpp"
#include "moments.hpp"
#include "parallel.hpp"
#include "row_kernels.hpp"

namespace normkit::core {

struct GroupShape {
  Index outer = 1, groups = 0, inner = 1;
  Index group_size() const { return outer * inner; }
};

enum class AffineAxis { Element, Group };

// P is the parameters' storage type.
template <class P>
struct NormParams {
  bool centered = true;  // false: RMSNorm (mean = 0, var = mean(x^2))
  double eps = 1e-5;
  bool eps_inside_sqrt = true;
  AffineAxis affine_axis = AffineAxis::Element;
  const P* weight = nullptr;  // Element: group_size() values; Group: groups values
  const P* bias = nullptr;
};

// Per-group statistics in memory order of the groups. P is A (forward writes) or const A (backward
// reads). mean and mean_lo may be null (read as 0); var is an optional forward output.
template <class P>
struct StatsArrays {
  P* mean = nullptr;
  P* mean_lo = nullptr;
  P* rstd = nullptr;
  P* var = nullptr;
};

namespace detail {

// Column panels: at most kMaxPanel columns (1 KiB of each row), so per-column state fits on the stack.
// The stack arrays take their bound from a std::size_t copy (constexpr std::size_t kPanel): GCC's
// -Wsign-conversion flags a signed bound that depends on a template parameter.
template <class A>
inline constexpr Index kMaxPanel = 16 * simd::width<A>;

// Columns per panel for `rows` rows. A panel is swept twice or three times (moments, then normalize
// or dx); when a panel of at least one packet fits in half of a typical L2, the widest such panel
// keeps those sweeps in cache. When even that does not fit (BatchNorm's long columns), the sweeps
// come from memory anyway and the widest panel streams best.
template <class A, class T>
Index panel_width(Index rows) {
  constexpr Index kBudgetBytes = Index(1) << 19, W = simd::width<A>;
  const Index fit = kBudgetBytes / (std::max<Index>(rows, 1) * Index(sizeof(T)));
  return fit < 8 * W ? kMaxPanel<A> : std::min(kMaxPanel<A>, fit / W * W);
}

// Rows per block of a column panel: the block is swept twice and should stay in L1/L2 meanwhile.
template <class T>
Index panel_block_rows(Index cols) {
  constexpr Index kBlockBytes = Index(1) << 16;
  return std::max<Index>(1, kBlockBytes / (cols * Index(sizeof(T))));
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
template <class A, class T>
Moments<A> run_two_pass(const T* run, Index n, bool centered, int exp2) {
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
    m = {n, A(0), A(0), run_sums(run, n, A(0), scale).s2};
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
template <class A, class T>
bool run_one_pass(const T* run, Index n, Moments<A>& m) {
  constexpr Index W = simd::width<A>;
  A shift = simd::load_scalar<A>(run);
  if (n >= W) {
    const simd::packet<A> v = simd::load<A>(run);
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
template <class A, class T>
Moments<A> run_moments(const T* run, Index n, bool centered) {
  Moments<A> m;
  if (!centered) {
    m = run_two_pass<A>(run, n, false, 0);  // one pass: sum of squares
  } else if (!run_one_pass(run, n, m)) {
    const A mean = m.mean + m.mean_lo, rms = std::sqrt(m.m2 / static_cast<A>(n) + mean * mean);
    const A shift = second_pass_shift<T>(mean, rms);
    m = moments_from_sums(n, shift, run_sums(run, n, shift));
  }
  if (in_range(m)) return m;
  const A top = run_max_abs<A>(run, n);
  if (!(top > A(0)) || !std::isfinite(top)) return m;  // all zeros, or Inf/NaN in the run: m says so
  int exp2 = 0;
  std::frexp(top, &exp2);
  return run_two_pass<A>(run, n, centered, std::max(exp2, std::numeric_limits<A>::min_exponent - 1));
}

// Each column's second-pass shift from rows [0, rows) of a panel: their mean, rounded as
// second_pass_shift rounds it (one pass of sums and squares).
template <class A, class T>
void cols_shift(const T* x, Index rows, Index cols, Index stride, A* shift) {
  constexpr std::size_t kPanel = kMaxPanel<A>;
  A zero[kPanel] = {}, s1[kPanel] = {}, s2[kPanel] = {};
  cols_sums(x, rows, cols, stride, zero, s1, s2);
  for (Index c = 0; c < cols; ++c)
    shift[c] = second_pass_shift<T>(s1[c] / static_cast<A>(rows), std::sqrt(s2[c] / static_cast<A>(rows)));
}

// The moments of rows [0, rows) of a column panel, in blocks of `block` rows: two passes per block,
// merged with Chan's update, a column of a block that leaves the range redone as a contiguous run.
// The robust form; panel_moments falls back to it for the columns its one pass cannot vouch for.
// Columns are independent: a column gives the same bits alone as within a panel.
template <class A, class T>
void panel_moments_blocked(const T* x, Index rows, Index cols, Index stride, Index block, bool centered,
                           Moments<A>* m) {
  constexpr std::size_t kPanel = kMaxPanel<A>;
  A mean0[kPanel] = {}, s1[kPanel], s2[kPanel];  // mean0 stays 0 without centering: one pass
  for (Index r0 = 0; r0 < rows; r0 += block) {
    const Index rb = std::min(block, rows - r0);
    const T* xb = x + r0 * stride;
    if (centered) cols_shift(xb, rb, cols, stride, mean0);
    std::fill(s1, s1 + cols, A(0));
    std::fill(s2, s2 + cols, A(0));
    cols_sums(xb, rb, cols, stride, mean0, s1, s2);
    for (Index c = 0; c < cols; ++c) {
      Moments<A> b = centered ? moments_from_sums(rb, mean0[c], Sums<A>{s1[c], s2[c]}) : Moments<A>{rb, A(0), A(0), s2[c]};
      if (!in_range(b)) {  // rare: redo this column of the block as a contiguous run
        std::vector<T> column(static_cast<std::size_t>(rb));
        for (Index r = 0; r < rb; ++r) column[static_cast<std::size_t>(r)] = xb[r * stride + c];
        b = run_moments<A>(column.data(), rb, centered);
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
template <class A, class T>
void panel_moments(const T* x, Index rows, Index cols, Index stride, bool centered, Moments<A>* m) {
  constexpr std::size_t kPanel = kMaxPanel<A>;
  if (rows == 0) return;
  A shift[kPanel] = {}, s1[kPanel] = {}, s2[kPanel] = {}, b1[kPanel], b2[kPanel];
  const Index block = panel_block_rows<T>(cols);
  if (centered) cols_shift(x, std::min(block, rows), cols, stride, shift);
  for (Index r0 = 0; r0 < rows; r0 += block) {
    std::fill(b1, b1 + cols, A(0));
    std::fill(b2, b2 + cols, A(0));
    cols_sums(x + r0 * stride, std::min(block, rows - r0), cols, stride, shift, b1, b2);
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
      if (panel[c].count == 0) panel_moments_blocked(x + c, rows, Index(1), stride, block, centered, &panel[c]);
  }
  for (Index c = 0; c < cols; ++c) m[c] = merge(m[c], panel[c]);
}

// Consecutive groups of a row shape are normalized kBatchGroups at a time, so that the sweeps load
// the per-element parameters (and load and store the parameter gradients) once for the batch, when
// the batch's `arrays` inputs (x; x and dy) fit in a typical L1 (32 KiB): its moments or sums are
// taken first and the sweep should find it there (rows of 4096 floats batched 4 at a time from L2
// made LayerNorm forward at 16384x4096 10% slower; BatchNorm's NCHW channels go one at a time).
// Not when a packet of output is less than a cache line and the output streams (bfloat16/half with
// non-temporal stores): four rows' half-written lines interleaved took LayerNorm bf16 forward at
// 16384x4096 from 21 to 37 ms.
inline constexpr Index kBatchGroups = 4;
template <class A, class T>
bool batch_groups(const GroupShape& s, Index arrays, bool stream) {
  if (stream && simd::width<A> * Index(sizeof(T)) < 64) return false;
  return kBatchGroups * arrays * s.group_size() * Index(sizeof(T)) <= (Index(1) << 15);
}

// Batches of four groups over `arrays` inputs that do not fit in L2 (4 MiB or more): the sweep over
// one batch prefetches the next batch's inputs into L2, so that the next sums pass reads from L2
// rather than waiting on memory. The hardware prefetcher does not: the sweep touches only lines
// already in L1. LayerNorm/RMSNorm backward 4096x768 went from 1.6 to 1.1 ms; forward, whose sweep
// reads one array, gained within noise (and was steadier).
template <class T>
bool beyond_l2(const GroupShape& s, Index arrays) {
  return arrays * s.outer * s.groups * s.inner * Index(sizeof(T)) >= (Index(4) << 20);
}

// Forward over groups of several runs (BatchNorm NCHW: a channel is N planes, C planes apart) in a
// tensor not in cache anyway: the normalize sweep over group g prefetches group g + 1 into L2, so
// that memory reads the next group while the sweep writes this one rather than after it
// (BatchNorm fwd 32x64x56x56: -18%). Only while both groups fit in a 1 MiB L2 (Zen 4, Intel server
// cores): backward's x and dy of two such channels (1.6 MB) did not, and were 4% slower for it.
// Not for single-run groups (LayerNorm rows): the next row is the next address, which the hardware
// prefetcher already fetches, and the extra requests made LayerNorm forward at 2048x4096 8% slower.
template <class T>
bool prefetch_groups(const GroupShape& s) {
  const Index bytes = s.group_size() * Index(sizeof(T));
  return s.outer > 1 && 2 * bytes <= (Index(1) << 20) && bytes * s.groups >= (Index(8) << 20);
}

// Outputs at least this large are written with non-temporal stores (simd.hpp): they would not stay
// in cache anyway, and streaming them saves a read of every output line.
inline constexpr Index kStreamBytes = Index(8) << 20;

template <class T>
bool stream_output(const GroupShape& s) {
  return s.outer * s.groups * s.inner * Index(sizeof(T)) >= kStreamBytes;
}

// How a shape is cut into chunks: by groups (row shape) or by whole column panels, so that a
// column shape's panels are the same whatever the chunk count. `partial` is the size, in values, of
// a partial result each chunk keeps (backward's per-element parameter gradients): their chunks are
// capped so that the partials stay within kPartialBytes, a part of L2, since the merge reads them
// all once more.
struct Chunking {
  Index units, chunks, unit_width;
};
inline constexpr Index kPartialBytes = Index(1) << 20;
template <class A, class T>
Chunking chunking(const GroupShape& s, Index partial = 0) {
  const Index total = s.outer * s.groups * s.inner;
  const Index width = s.inner > 1 ? 1 : panel_width<A, T>(s.outer);
  const Index units = (s.groups + width - 1) / width;
  const Index cap = partial ? std::max<Index>(1, kPartialBytes / (partial * Index(2 * sizeof(A)))) : kMaxChunks;
  return {units, chunk_count(units, total, std::min(cap, kMaxChunks)), width};
}

// Column shapes with few columns (BatchNorm channels-last) are cut by rows instead: chunks that took
// a share of every row would fight over the same cache lines, and fewer columns than two panels
// leave too few column chunks to spread. Returns 1 for every other shape.
template <class A>
Index row_chunks(const GroupShape& s) {
  if (s.inner > 1 || s.groups >= 2 * kMaxPanel<A>) return 1;
  return chunk_count(s.outer, s.outer * s.groups);
}

// Calls f(chunk, first_group, end_group) for every chunk, on the executor.
template <class Exec, class F>
void for_chunks(const Exec& exec, const GroupShape& s, const Chunking& ch, F&& f) {
  exec.run(ch.chunks, [&](Index k) {
    const Index g0 = chunk_begin(ch.units, ch.chunks, k) * ch.unit_width;
    const Index g1 = std::min(s.groups, chunk_begin(ch.units, ch.chunks, k + 1) * ch.unit_width);
    f(k, g0, g1);
  });
}

}  // namespace detail

// y = normalize(x) group by group. With compute_stats the statistics are computed and written to
// `stats`; without, they are read from it (BatchNorm in eval mode).
template <class A, class T, class P, class Exec>
void forward_groups(const Exec& exec, const T* x, T* y, const GroupShape& s, const NormParams<P>& p,
                    const StatsArrays<A>& stats, bool compute_stats) {
  const bool element_affine = p.affine_axis == AffineAxis::Element;
  const P* w_elem = element_affine ? p.weight : nullptr;
  const P* b_elem = element_affine ? p.bias : nullptr;
  // Statistics of group g (computed from m, or read back), and its sweep coefficients.
  const auto coefficients = [&](Index g, const Moments<A>& m) {
    RunNormalize<A> c{};
    if (compute_stats) {
      c = {m.mean, m.mean_lo, detail::group_rstd(m, p.eps, p.eps_inside_sqrt), A(0)};
      if (stats.mean) stats.mean[g] = c.mean;
      if (stats.mean_lo) stats.mean_lo[g] = c.mean_lo;
      if (stats.var) stats.var[g] = variance(m);
      stats.rstd[g] = c.scale;
    } else {
      c = {stats.mean ? stats.mean[g] : A(0), stats.mean_lo ? stats.mean_lo[g] : A(0), stats.rstd[g], A(0)};
    }
    if (!element_affine && p.weight) c.scale *= static_cast<A>(p.weight[g]);
    if (!element_affine && p.bias) c.shift = static_cast<A>(p.bias[g]);
    return c;
  };
  if (s.outer * s.groups * s.inner == 0) {  // no values: statistics of empty groups are NaN (0/0)
    if (compute_stats)
      for (Index g = 0; g < s.groups; ++g) coefficients(g, Moments<A>{});
    return;
  }
  const detail::Chunking ch = detail::chunking<A, T>(s);
  const bool stream = detail::stream_output<T>(s);
  const auto run_at = [&](Index o, Index g) { return (o * s.groups + g) * s.inner; };

  if (s.inner > 1 && !compute_stats) {  // row shape, given statistics: one sweep in memory order
    const Index runs = s.outer * s.groups;
    exec.run(ch.chunks, [&](Index k) {
      for (Index r = chunk_begin(runs, ch.chunks, k), end = chunk_begin(runs, ch.chunks, k + 1); r < end; ++r) {
        const Index o = r / s.groups, g = r % s.groups;
        normalize_run(x + run_at(o, g), y + run_at(o, g), s.inner, coefficients(g, Moments<A>{}),
                      w_elem ? w_elem + o * s.inner : nullptr, b_elem ? b_elem + o * s.inner : nullptr, stream);
      }
      if (stream) simd::stream_fence();
    });
    return;
  }

  if (s.inner > 1) {  // row shape: group g is `outer` contiguous runs of `inner` values
    constexpr Index R = detail::kBatchGroups;
    const bool batch = detail::batch_groups<A, T>(s, 1, stream), prefetch = detail::prefetch_groups<T>(s);
    const bool prefetch_batch = batch && detail::beyond_l2<T>(s, 1);
    detail::for_chunks(exec, s, ch, [&](Index, Index g0, Index g1) {
      for (Index g = g0, rb = 1; g < g1; g += rb) {
        rb = batch && g1 - g >= R ? R : 1;
        RunNormalize<A> c[R];
        for (Index j = 0; j < rb; ++j) {
          Moments<A> m;
          for (Index o = 0; o < s.outer; ++o)
            m = merge(m, detail::run_moments<A>(x + run_at(o, g + j), s.inner, p.centered));
          c[j] = coefficients(g + j, m);
        }
        // The next batch (or group) of this chunk, to prefetch: its runs sit rb runs further on.
        const Index next = (rb == R ? prefetch_batch : prefetch) && g + 2 * rb <= g1 ? rb * s.inner : 0;
        for (Index o = 0; o < s.outer; ++o) {
          const P* w = w_elem ? w_elem + o * s.inner : nullptr;
          const P* b = b_elem ? b_elem + o * s.inner : nullptr;
          if (rb == R) normalize_runs<R>(x + run_at(o, g), y + run_at(o, g), s.inner, s.inner, c, w, b, stream, next);
          else normalize_runs<1>(x + run_at(o, g), y + run_at(o, g), s.inner, s.inner, c, w, b, stream, next);
        }
      }
      if (stream) simd::stream_fence();
    });
    return;
  }

  // column shape: `outer` rows, group g is column g, processed in panels of columns
  const Index G = s.groups, row_chunks = detail::row_chunks<A>(s);
  if (row_chunks > 1) {  // few columns: each chunk takes whole rows; moments merged in chunk order
    const auto rows_of = [&](Index k) {
      return std::pair<Index, Index>{chunk_begin(s.outer, row_chunks, k), chunk_begin(s.outer, row_chunks, k + 1)};
    };
    // Scratch is owned by vectors and indexed through their data pointers, with Index like the rest.
    std::vector<Moments<A>> part_buf(compute_stats ? static_cast<std::size_t>(row_chunks * G) : 0);
    Moments<A>* const part = part_buf.data();
    if (compute_stats)
      exec.run(row_chunks, [&](Index k) {
        const auto [r0, r1] = rows_of(k);
        constexpr Index kPanelCols = detail::kMaxPanel<A>;
        for (Index p0 = 0; p0 < G; p0 += kPanelCols)
          detail::panel_moments(x + r0 * G + p0, r1 - r0, std::min(kPanelCols, G - p0), G, p.centered,
                                part + k * G + p0);
      });
    std::vector<A> coef_buf(static_cast<std::size_t>(4 * G));
    A* const coef = coef_buf.data();  // mean, mean_lo, scale, shift of every column
    for (Index c = 0; c < G; ++c) {
      Moments<A> m;
      for (Index k = 0; compute_stats && k < row_chunks; ++k) m = merge(m, part[k * G + c]);
      const RunNormalize<A> cc = coefficients(c, m);
      coef[c] = cc.mean, coef[G + c] = cc.mean_lo, coef[2 * G + c] = cc.scale, coef[3 * G + c] = cc.shift;
    }
    exec.run(row_chunks, [&](Index k) {
      const auto [r0, r1] = rows_of(k);
      normalize_cols(x + r0 * G, y + r0 * G, r1 - r0, G, G,
                     ColsNormalize<A>{coef, coef + G, coef + 2 * G, coef + 3 * G},
                     w_elem ? w_elem + r0 : nullptr, b_elem ? b_elem + r0 : nullptr, stream);
      if (stream) simd::stream_fence();
    });
    return;
  }
  const Index panel = detail::panel_width<A, T>(s.outer);
  constexpr std::size_t kPanel = detail::kMaxPanel<A>;  // array bounds are size_t (see kMaxPanel)
  detail::for_chunks(exec, s, ch, [&](Index, Index g0, Index g1) {
    for (Index p0 = g0; p0 < g1; p0 += panel) {
      const Index pc = std::min(panel, g1 - p0);
      Moments<A> m[kPanel];
      if (compute_stats) detail::panel_moments(x + p0, s.outer, pc, s.groups, p.centered, m);
      A mean[kPanel], mean_lo[kPanel], scale[kPanel], shift[kPanel];
      for (Index c = 0; c < pc; ++c) {
        const RunNormalize<A> k = coefficients(p0 + c, m[c]);
        mean[c] = k.mean, mean_lo[c] = k.mean_lo, scale[c] = k.scale, shift[c] = k.shift;
      }
      normalize_cols(x + p0, y + p0, s.outer, pc, s.groups, ColsNormalize<A>{mean, mean_lo, scale, shift}, w_elem,
                     b_elem, stream);
    }
    if (stream) simd::stream_fence();
  });
}

// dx from dy, and the parameter gradients. batch_stats: the statistics came from this batch, so dx
// carries the mean and variance terms (training); otherwise they were constants (BatchNorm eval) and
// dx = dy * weight * rstd. dweight/dbias (may be null) receive sum(dy * xhat) and sum(dy): per element
// of a group (group_size() values) for Element affine, per group for Group affine.
template <class A, class T, class P, class Exec>
void backward_groups(const Exec& exec, const T* x, const T* dy, T* dx, const GroupShape& s, const NormParams<P>& p,
                     const StatsArrays<const A>& stats, bool batch_stats, P* dweight, P* dbias) {
  const bool element_affine = p.affine_axis == AffineAxis::Element;
  const P* w_elem = element_affine ? p.weight : nullptr;
  const Index n = s.group_size();
  // Per-group constants. xhat uses rstd, except that var = 0 with eps = 0 (rstd = inf) has xhat = 0
  // rather than 0 * inf, as the contract says.
  const auto coefficients = [&](Index g) {
    const A rstd = stats.rstd[g];
    const A wg = !element_affine && p.weight ? static_cast<A>(p.weight[g]) : A(1);
    return RunGrad<A>{stats.mean ? stats.mean[g] : A(0), stats.mean_lo ? stats.mean_lo[g] : A(0),
                      std::isinf(rstd) ? A(0) : rstd, rstd * wg, A(0), A(0)};
  };
  // From the group's sums (s1 = sum g, s2 = sum g * xhat): the dx terms and Group-affine gradients.
  const auto finish = [&](Index g, RunGrad<A>& c, const Sums<A>& sums) {
    if (!element_affine && dweight) dweight[g] = static_cast<P>(sums.s2);
    if (!element_affine && dbias) dbias[g] = static_cast<P>(sums.s1);
    c.mean_g = p.centered ? sums.s1 / static_cast<A>(n) : A(0);
    c.mean_gx = sums.s2 / static_cast<A>(n) * variance_term_factor(stats.rstd[g], p.eps, p.eps_inside_sqrt);
  };
  if (s.outer * s.groups * s.inner == 0) {  // no values: zero parameter gradients of full size
    const Index params = element_affine ? n : s.groups;
    if (dweight) std::fill(dweight, dweight + params, P(0));
    if (dbias) std::fill(dbias, dbias + params, P(0));
    return;
  }
  // Element-affine parameter gradients: one partial row per chunk, summed in chunk order at the end.
  const bool partials = w_elem && (dweight || dbias);
  const detail::Chunking ch = detail::chunking<A, T>(s, partials ? n : 0);
  const Index row_chunks = detail::row_chunks<A>(s), chunks = row_chunks > 1 ? row_chunks : ch.chunks;
  const bool stream = detail::stream_output<T>(s);
  const std::size_t part_size = partials ? static_cast<std::size_t>(chunks * n) : 0;
  std::vector<A> dw_part(part_size), db_part(part_size);

  if (s.inner > 1) {  // row shape (training: batches of groups; eval: dx = dy * scale, group by group)
    constexpr Index R = detail::kBatchGroups;
    const bool batch = batch_stats && detail::batch_groups<A, T>(s, 2, stream);
    const bool prefetch_batch = batch && detail::beyond_l2<T>(s, 2);
    detail::for_chunks(exec, s, ch, [&](Index k, Index g0, Index g1) {
      A* dw = partials ? dw_part.data() + k * n : nullptr;
      A* db = partials ? db_part.data() + k * n : nullptr;
      for (Index g = g0, rb = 1; g < g1; g += rb) {
        rb = batch && g1 - g >= R ? R : 1;
        RunGrad<A> c[R];
        for (Index j = 0; j < rb; ++j) {
          c[j] = coefficients(g + j);
          Sums<A> sums;
          for (Index o = 0; o < s.outer; ++o) {
            const Index at = (o * s.groups + g + j) * s.inner;
            const Sums<A> r = backward_run_sums(x + at, dy + at, w_elem ? w_elem + o * s.inner : nullptr, s.inner, c[j]);
            sums.s1 += r.s1, sums.s2 += r.s2;
          }
          finish(g + j, c[j], sums);
        }
        for (Index o = 0; o < s.outer; ++o) {
          const Index at = (o * s.groups + g) * s.inner, e = o * s.inner;
          const P* w = w_elem ? w_elem + e : nullptr;
          A* dwe = dw ? dw + e : nullptr;
          A* dbe = db ? db + e : nullptr;
          if (!batch_stats)  // rb == 1
            normalize_run(dy + at, dx + at, s.inner, RunNormalize<A>{A(0), A(0), c[0].scale, A(0)}, w,
                          static_cast<const P*>(nullptr), stream);
          else if (rb == R)
            backward_runs_dx<R>(x + at, dy + at, w, dx + at, s.inner, s.inner, c, dwe, dbe, stream,
                                prefetch_batch && g + 2 * R <= g1 ? R * s.inner : 0);
          else backward_runs_dx<1>(x + at, dy + at, w, dx + at, s.inner, s.inner, c, dwe, dbe, stream);
        }
      }
      if (stream) simd::stream_fence();
    });
  } else if (row_chunks > 1) {  // column shape with few columns: each chunk takes whole rows
    const Index G = s.groups;
    const auto rows_of = [&](Index k) {
      return std::pair<Index, Index>{chunk_begin(s.outer, row_chunks, k), chunk_begin(s.outer, row_chunks, k + 1)};
    };
    // Scratch is owned by vectors and indexed through their data pointers, with Index like the rest.
    std::vector<RunGrad<A>> c_buf(static_cast<std::size_t>(G));
    std::vector<A> cols_buf(static_cast<std::size_t>(7 * G), A(0));
    RunGrad<A>* const c = c_buf.data();
    A* const cols = cols_buf.data();  // mean, mean_lo, rstd, scale, -mean_g, -mean_gx, zeros
    for (Index g = 0; g < G; ++g) {
      c[g] = coefficients(g);
      cols[g] = c[g].mean, cols[G + g] = c[g].mean_lo, cols[2 * G + g] = c[g].rstd, cols[3 * G + g] = c[g].scale;
    }
    const A* col = cols;
    const ColsGrad<A> kc{col, col + G, col + 2 * G, col + 3 * G, col + 4 * G, col + 5 * G};
    // Per chunk: its sums and a block's sums (two-level summation down each column).
    std::vector<A> part_buf(static_cast<std::size_t>(4 * row_chunks * G));
    A* const part = part_buf.data();
    exec.run(row_chunks, [&](Index k) {
      const auto [r0, r1] = rows_of(k);
      A *sum_g = part + 4 * k * G, *sum_gx = sum_g + G, *block_g = sum_g + 2 * G, *block_gx = sum_g + 3 * G;
      std::fill(sum_g, sum_g + 2 * G, A(0));
      const Index block = detail::panel_block_rows<T>(G);
      for (Index b0 = r0; b0 < r1; b0 += block) {
        const Index rb = std::min(block, r1 - b0);
        std::fill(block_g, block_g + 2 * G, A(0));
        backward_cols_sums(x + b0 * G, dy + b0 * G, rb, G, G, kc, w_elem ? w_elem + b0 : nullptr, block_g, block_gx);
        for (Index j = 0; j < G; ++j) sum_g[j] += block_g[j], sum_gx[j] += block_gx[j];
      }
    });
    for (Index g = 0; g < G; ++g) {
      Sums<A> sums;
      for (Index k = 0; k < row_chunks; ++k) sums.s1 += part[4 * k * G + g], sums.s2 += part[4 * k * G + G + g];
      finish(g, c[g], sums);
      cols[4 * G + g] = -c[g].mean_g, cols[5 * G + g] = -c[g].mean_gx;
    }
    exec.run(row_chunks, [&](Index k) {
      const auto [r0, r1] = rows_of(k);
      const Index at = r0 * G;
      if (batch_stats)
        backward_cols_dx(x + at, dy + at, dx + at, r1 - r0, G, G, kc, w_elem ? w_elem + r0 : nullptr,
                         partials ? dw_part.data() + k * n + r0 : nullptr, partials ? db_part.data() + k * n + r0 : nullptr,
                         stream);
      else
        normalize_cols(dy + at, dx + at, r1 - r0, G, G, ColsNormalize<A>{col + 6 * G, col + 6 * G, col + 3 * G, col + 6 * G},
                       w_elem ? w_elem + r0 : nullptr, static_cast<const P*>(nullptr), stream);
      if (stream) simd::stream_fence();
    });
  } else {  // column shape
    constexpr std::size_t kPanel = detail::kMaxPanel<A>;  // array bounds are size_t (see kMaxPanel)
    const Index panel = detail::panel_width<A, T>(s.outer);
    detail::for_chunks(exec, s, ch, [&](Index k, Index g0, Index g1) {
      A* dw = partials ? dw_part.data() + k * n : nullptr;
      A* db = partials ? db_part.data() + k * n : nullptr;
      for (Index p0 = g0; p0 < g1; p0 += panel) {
        const Index pc = std::min(panel, g1 - p0);
        A mean[kPanel], mean_lo[kPanel], rstd[kPanel], scale[kPanel], neg_mean_g[kPanel], neg_mean_gx[kPanel];
        A zero[kPanel] = {}, sum_g[kPanel] = {}, sum_gx[kPanel] = {}, block_g[kPanel], block_gx[kPanel];
        RunGrad<A> c[kPanel];
        for (Index j = 0; j < pc; ++j) {
          c[j] = coefficients(p0 + j);
          mean[j] = c[j].mean, mean_lo[j] = c[j].mean_lo, rstd[j] = c[j].rstd, scale[j] = c[j].scale;
        }
        const ColsGrad<A> kc{mean, mean_lo, rstd, scale, neg_mean_g, neg_mean_gx};
        // Sums block by block (two-level summation keeps the error small for long columns).
        const Index block = detail::panel_block_rows<T>(pc);
        for (Index r0 = 0; r0 < s.outer; r0 += block) {
          const Index rb = std::min(block, s.outer - r0), at = r0 * s.groups + p0;
          std::fill(block_g, block_g + pc, A(0));
          std::fill(block_gx, block_gx + pc, A(0));
          backward_cols_sums(x + at, dy + at, rb, pc, s.groups, kc, w_elem ? w_elem + r0 : nullptr, block_g, block_gx);
          for (Index j = 0; j < pc; ++j) sum_g[j] += block_g[j], sum_gx[j] += block_gx[j];
        }
        for (Index j = 0; j < pc; ++j) {
          finish(p0 + j, c[j], Sums<A>{sum_g[j], sum_gx[j]});
          neg_mean_g[j] = -c[j].mean_g, neg_mean_gx[j] = -c[j].mean_gx;
        }
        if (batch_stats)
          backward_cols_dx(x + p0, dy + p0, dx + p0, s.outer, pc, s.groups, kc, w_elem, dw, db, stream);
        else
          normalize_cols(dy + p0, dx + p0, s.outer, pc, s.groups, ColsNormalize<A>{zero, zero, scale, zero}, w_elem,
                         static_cast<const P*>(nullptr), stream);
      }
      if (stream) simd::stream_fence();
    });
  }

  if (partials) {
    const A *dw = dw_part.data(), *db = db_part.data();
    for (Index e = 0; e < n; ++e) {
      A sw = 0, sb = 0;
      for (Index k = 0; k < chunks; ++k) sw += dw[k * n + e], sb += db[k * n + e];
      if (dweight) dweight[e] = static_cast<P>(sw);
      if (dbias) dbias[e] = static_cast<P>(sb);
    }
  } else if (element_affine) {  // no weight: no Element-affine gradients to give
    if (dweight) std::fill(dweight, dweight + n, P(0));
    if (dbias) std::fill(dbias, dbias + n, P(0));
  }
}

}  // namespace normkit::core
