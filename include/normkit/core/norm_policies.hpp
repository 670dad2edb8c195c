// normkit/core/norm_policies.hpp — the math of a normalization, as policies of run_groups
// (iterate.hpp): NormForward (statistics, then y = normalize(x)) and NormBackward (the two sums,
// then dx).
//
// Forward, per group:  mean, m2 (stats.hpp);  rstd = 1/sqrt(var + eps) (or 1/(sqrt(var) + eps));
//                      y = ((x - mean) - mean_lo) * rstd * weight + bias
// Backward, per group: s1 = sum(g), s2 = sum(g * xhat), g = dy * weight;
//                      dx = rstd * (g - s1/n - xhat * s2/n * factor)   (moments.hpp: the factor)
//                      dweight = sum(dy * xhat), dbias = sum(dy)
// The weight and bias are per element of a group (AffineAxis::Element, index o * inner + i:
// LayerNorm, RMSNorm), per group (Group: BatchNorm, folded into the group's scale and shift), or per
// channel inside a group (Channel: GroupNorm, a run of a row shape holding group_channels channels
// of inner / group_channels values each, group g's first channel (g % channel_groups) *
// group_channels; in a column shape, one channel per group: the per-group affine).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "col_kernels.hpp"
#include "fusion.hpp"
#include "iterate.hpp"
#include "moments.hpp"
#include "row_kernels.hpp"
#include "stats.hpp"

namespace normkit::core {

enum class AffineAxis { Element, Group, Channel };

// P is the parameters' storage type.
template <class P>
struct NormParams {
  bool centered = true;  // false: RMSNorm (mean = 0, var = mean(x^2))
  double eps = 1e-5;
  bool eps_inside_sqrt = true;
  AffineAxis affine_axis = AffineAxis::Element;
  const P* weight = nullptr;  // Element: group_size() values; Group: groups values; Channel: channels
  const P* bias = nullptr;
  Index channel_groups = 1, group_channels = 1;  // Channel only (see above)

  Index channels() const { return channel_groups * group_channels; }
  Index first_channel(Index g) const { return (g % channel_groups) * group_channels; }
};

// Per-group statistics in memory order of the groups. S is A (forward writes) or const A (backward
// reads). mean and mean_lo may be null (read as 0); var is an optional forward output.
template <class S>
struct StatsArrays {
  S* mean = nullptr;
  S* mean_lo = nullptr;
  S* rstd = nullptr;
  S* var = nullptr;
};

namespace detail {

template <class A>
inline constexpr A kZeros[kPanelCols<A>] = {};

// The per-column coefficients of a column panel (iterate.hpp: Policy::Columns), kept as the column
// kernels read them, an array per field: the panel's sums and its sweep read them as they are,
// where a transposition from one struct per column before each kernel call was most of the
// driver's own time on short columns.
template <class A>
struct NormalizeColumns {
  A mean[kPanelCols<A>], mean_lo[kPanelCols<A>], scale[kPanelCols<A>], shift[kPanelCols<A>];
  void set(Index j, const RunNormalize<A>& c) {
    mean[j] = c.mean, mean_lo[j] = c.mean_lo, scale[j] = c.scale, shift[j] = c.shift;
  }
  RunNormalize<A> get(Index j) const { return {mean[j], mean_lo[j], scale[j], shift[j]}; }
  ColsNormalize<A> view() const { return {mean, mean_lo, scale, shift}; }
};

// mean_g and mean_gx kept negated (the sweep adds them); a Coef's weight is not kept: a column
// shape's per-column weight is the sweep's (NormBackward::sweep_panel).
template <class A>
struct GradColumns {
  A mean[kPanelCols<A>], mean_lo[kPanelCols<A>], rstd[kPanelCols<A>], scale[kPanelCols<A>];
  A neg_mean_g[kPanelCols<A>], neg_mean_gx[kPanelCols<A>];
  void set(Index j, const RunGrad<A>& c) {
    mean[j] = c.mean, mean_lo[j] = c.mean_lo, rstd[j] = c.rstd, scale[j] = c.scale;
    neg_mean_g[j] = -c.mean_g, neg_mean_gx[j] = -c.mean_gx;
  }
  RunGrad<A> get(Index j) const { return {mean[j], mean_lo[j], rstd[j], scale[j], -neg_mean_g[j], -neg_mean_gx[j]}; }
  ColsGrad<A> view() const { return {mean, mean_lo, rstd, scale, neg_mean_g, neg_mean_gx}; }
};

}  // namespace detail

// Forward. Passes::Reduce with `moments` set writes each group's raw moments there and nothing
// else (SyncBatchNorm merges them across processes); otherwise finish writes the statistics, and
// Passes::Sweep reads them back instead (BatchNorm eval).
template <class Acc, class P, class Load, class Store>
struct NormForward {
  using A = Acc;
  using T = typename Load::value_type;
  using Partial = Moments<A>;
  using Coef = RunNormalize<A>;
  using Columns = detail::NormalizeColumns<A>;
  static constexpr Index inputs = 1;  // arrays the sweep reads per element

  Load x{};
  Store y{};
  GroupShape s;
  NormParams<P> p;
  StatsArrays<A> stats;
  bool stream = false;
  bool fetch = false;  // column kernels prefetch (iterate.hpp: prefetch_columns)
  Moments<A>* moments = nullptr;

  static Partial combine(const Partial& a, const Partial& b) { return merge(a, b); }
  bool batchable() const { return p.affine_axis != AffineAxis::Channel; }
  Index partial_size() const { return 0; }
  void merge_partials(const A*) const {}
  // No values: the statistics of empty groups are NaN (0/0).
  void empty(Passes passes) const {
    if (passes != Passes::Sweep)
      for (Index g = 0; g < s.groups; ++g) finish(g, Coef{}, Moments<A>{});
  }

  // A prologue that keeps what it loads (a stored residual sum h) keeps it in a pass of its own
  // over each run, and the statistics and the sweep then read it back from cache: one add and one
  // rounding per value instead of one per pass (in bfloat16 the rounding is most of the work). It
  // keeps it in h itself, except while streaming: h is then stored by the sweep, non-temporally,
  // never read for ownership. A sum that is rounded (T narrower than A) is then kept in the
  // thread's scratch row and copied to h by the sweep, where each group is one run swept alone (a
  // batch's sweep reads its runs at one stride) that fits in L2 with its inputs (where the
  // statistics and the sweep read it back); a sum in A is formed again by the sweep (a load and
  // an FMA, against a store and a load to keep it).
  bool keep_first() const {
    if (!x.keeps()) return false;
    if (!stream) return true;
    const bool fits = (Load::arrays + 1) * s.inner * Index(sizeof(T)) <= tuning::kL2Bytes;
    return sizeof(T) < sizeof(A) && s.outer == 1 && fits &&
           !(batchable() && detail::batch_groups<A, T>(s, inputs, stream));
  }
  // Where a kept run is: in h, or while streaming in the thread's scratch row, at h's page offset
  // (fusion.hpp: scratch_row).
  T* kept_run(Index at) const { return stream ? scratch_row<T>(s.inner, x.kept(at)) : x.kept(at); }

  Coef start(Index) const { return Coef{}; }
  // next (0: none): the runs at at + next are swept next. A LayerNorm/RMSNorm row prefetches them
  // into L2 here as well as in its sweep, so that memory serves reads while this pass reads from
  // cache (otherwise the sweep's prefetches and its streaming stores share the memory's time, and
  // this pass leaves it idle). Not GroupNorm's groups (slower in the case measured, for a reason
  // not found) nor BatchNorm's planes (not measured). docs/benchmarks.md, stop 35.
  Partial reduce_run(const Coef&, Index, Index, Index at, Index next, A*) const {
    if (!keep_first()) {
      if (next && p.affine_axis == AffineAxis::Element)
        return detail::run_moments<A>(LoadAhead<Load>{x.at(at), next}, s.inner, p.centered);
      return detail::run_moments<A>(x.at(at), s.inner, p.centered);
    }
    T* kept = kept_run(at);
    keep_run<A>(x.at(at), s.inner, kept);
    return detail::run_moments<A>(LoadX<T>{kept}, s.inner, p.centered);
  }
  void reduce_panel(const Columns&, Index g0, Index r0, Index rows, Index cols, Partial* m) const {
    constexpr Index kPanel = detail::kMaxPanel<A>;
    for (Index c0 = 0; c0 < cols; c0 += kPanel)
      detail::panel_moments(x.at(r0 * s.groups + g0 + c0), rows, std::min(kPanel, cols - c0), s.groups, p.centered,
                            m + c0, fetch ? s.outer - r0 : 0);
  }
  Coef finish(Index g, const Coef&, const Partial& m) const {
    if (moments) {
      moments[g] = m;
      return Coef{};
    }
    const Coef c{m.mean, m.mean_lo, detail::group_rstd(m, p.eps, p.eps_inside_sqrt), A(0)};
    if (stats.mean) stats.mean[g] = c.mean;
    if (stats.mean_lo) stats.mean_lo[g] = c.mean_lo;
    if (stats.var) stats.var[g] = variance(m);
    stats.rstd[g] = c.scale;
    return fold(g, c);
  }
  Coef given(Index g) const {
    return fold(g,
                Coef{stats.mean ? stats.mean[g] : A(0), stats.mean_lo ? stats.mean_lo[g] : A(0), stats.rstd[g], A(0)});
  }
  // A constant weight and bias fold into the scale and shift.
  Coef fold(Index g, Coef c) const {
    if (p.affine_axis != AffineAxis::Group) return c;
    if (p.weight) c.scale *= static_cast<A>(p.weight[g]);
    if (p.bias) c.shift = static_cast<A>(p.bias[g]);
    return c;
  }

  template <int R>
  void sweep_runs(Index g, Index o, const Coef* c, Index next, A*) const {
    const Index at = s.run_at(o, g);
    if (p.affine_axis == AffineAxis::Channel) return sweep_channels(g, at, c[0]);
    const bool element = p.affine_axis == AffineAxis::Element;
    const P* w = element && p.weight ? p.weight + o * s.inner : nullptr;
    const P* b = element && p.bias ? p.bias + o * s.inner : nullptr;
    if (!keep_first()) return normalize_runs<R>(x.at(at), y.at(at), s.inner, s.inner, c, w, b, stream, next);
    // In cache nothing to prefetch: the next runs' h is formed by their own keep pass.
    if (!stream) return normalize_runs<R>(LoadX<T>{x.kept(at)}, y.at(at), s.inner, s.inner, c, w, b, stream, Index(0));
    normalize_runs<R>(LoadCopy<T, Load>{kept_run(at), x.kept(at), x.at(at)}, y.at(at), s.inner, s.inner, c, w, b,
                      stream, next);
  }
  // Each channel's segment of the run with its weight and bias folded into the coefficients; with one
  // value per channel (channels-last), the group's channels as per-element parameters.
  void sweep_channels(Index g, Index at, const Coef& c) const {
    const Index first = p.first_channel(g), len = s.inner / p.group_channels;
    const P* none = nullptr;
    if (len == 1) {
      normalize_runs<1>(x.at(at), y.at(at), s.inner, s.inner, &c, p.weight ? p.weight + first : none,
                        p.bias ? p.bias + first : none, stream);
      return;
    }
    for (Index j = 0; j < p.group_channels; ++j) {
      Coef cj = c;
      if (p.weight) cj.scale *= static_cast<A>(p.weight[first + j]);
      if (p.bias) cj.shift = static_cast<A>(p.bias[first + j]);
      normalize_runs<1>(x.at(at + j * len), y.at(at + j * len), len, len, &cj, none, none, stream);
    }
  }
  // fetch_rows: the rows from r0 the sweep may prefetch (col_kernels.hpp), 0 where they are in L2.
  void sweep_panel(const Columns& k, Index g0, Index r0, Index rows, Index cols, A*, Index fetch_rows) const {
    const Index at = r0 * s.groups + g0;
    const bool element = p.affine_axis == AffineAxis::Element;
    normalize_cols(x.at(at), y.at(at), rows, cols, s.groups, k.view(), element && p.weight ? p.weight + r0 : nullptr,
                   element && p.bias ? p.bias + r0 : nullptr, stream, fetch ? fetch_rows : 0);
  }
};

// Per-group sum(dy) and sum(dy * xhat) of a whole batch (SyncBatchNorm: over every process).
template <class S>
struct BatchSums {
  S* sum_dy = nullptr;
  S* sum_dy_xhat = nullptr;
  Index count = 0;  // values per group they were summed over
};

// Backward. batch_stats false: the statistics were constants (BatchNorm eval), dx = dy * weight *
// rstd. SyncBatchNorm's halves: Passes::Reduce writes each group's sums to sums_out and nothing
// else; Passes::Sweep takes them from sums_in.
template <class Acc, class T_, class P, class Store>
struct NormBackward {
  using A = Acc;
  using T = T_;
  using Partial = Sums<A>;
  using Coef = RunGrad<A>;
  using Columns = detail::GradColumns<A>;
  static constexpr Index inputs = 2;

  const T* x = nullptr;
  const T* dy = nullptr;
  Store dx{};
  GroupShape s;
  NormParams<P> p;
  StatsArrays<const A> stats;
  bool batch_stats = true;
  P* dweight = nullptr;
  P* dbias = nullptr;
  bool stream = false;
  bool fetch = false;  // column kernels prefetch (iterate.hpp: prefetch_columns)
  BatchSums<A> sums_out;
  BatchSums<const A> sums_in;

  static Partial combine(const Partial& a, const Partial& b) { return {a.s1 + b.s1, a.s2 + b.s2}; }
  bool batchable() const { return batch_stats && p.affine_axis != AffineAxis::Channel; }
  Index param_size() const {
    if (p.affine_axis == AffineAxis::Element) return s.group_size();
    return p.affine_axis == AffineAxis::Group ? s.groups : p.channels();
  }
  // dweight and dbias of Element and Channel parameters cross groups: per-chunk partials.
  Index partial_size() const {
    const bool crossing = p.affine_axis != AffineAxis::Group && p.weight && (dweight || dbias);
    return crossing ? 2 * param_size() : 0;
  }
  void merge_partials(const A* sum) const {
    if (p.affine_axis == AffineAxis::Group) return;  // written by finish
    const Index n = param_size();
    const auto write = [n](P* out, const A* from) {
      if (!out) return;
      if (from) std::transform(from, from + n, out, [](A v) { return static_cast<P>(v); });
      else std::fill(out, out + n, P(0));
    };
    write(dweight, sum);
    write(dbias, sum ? sum + n : nullptr);
  }
  // No values: zero sums, zero parameter gradients of full size.
  void empty(Passes passes) const {
    if (passes == Passes::Reduce && sums_out.sum_dy) {
      std::fill(sums_out.sum_dy, sums_out.sum_dy + s.groups, A(0));
      std::fill(sums_out.sum_dy_xhat, sums_out.sum_dy_xhat + s.groups, A(0));
    }
    if (passes == Passes::Sweep) return;
    if (dweight) std::fill(dweight, dweight + param_size(), P(0));
    if (dbias) std::fill(dbias, dbias + param_size(), P(0));
  }

  // xhat uses rstd, except that var = 0 with eps = 0 (rstd = inf) has xhat = 0 rather than 0 * inf,
  // as the contract says. A group weight scales dx (g = dy * weight, constant over the group).
  Coef start(Index g) const {
    const A rstd = stats.rstd[g];
    const A wg = p.affine_axis == AffineAxis::Group && p.weight ? static_cast<A>(p.weight[g]) : A(1);
    return Coef{stats.mean ? stats.mean[g] : A(0),
                stats.mean_lo ? stats.mean_lo[g] : A(0),
                std::isinf(rstd) ? A(0) : rstd,
                rstd * wg,
                A(0),
                A(0)};
  }
  Partial reduce_run(const Coef& c, Index g, Index o, Index at, Index, A* partial) const {
    if (p.affine_axis == AffineAxis::Channel) return reduce_channels(c, g, at, partial);
    const P* w = p.affine_axis == AffineAxis::Element && p.weight ? p.weight + o * s.inner : nullptr;
    return backward_run_sums(x + at, dy + at, w, s.inner, c);
  }
  // g = dy * weight[channel]: each channel segment's sum(dy), sum(dy * xhat) are also its bias and
  // weight gradients. With one value per channel the sweep accumulates those instead.
  Partial reduce_channels(const Coef& c, Index g, Index at, A* partial) const {
    const Index first = p.first_channel(g), len = s.inner / p.group_channels;
    const P* none = nullptr;
    if (len == 1) return backward_run_sums(x + at, dy + at, p.weight ? p.weight + first : none, s.inner, c);
    Partial sums;
    for (Index j = 0; j < p.group_channels; ++j) {
      const Sums<A> r = backward_run_sums(x + at + j * len, dy + at + j * len, none, len, c);
      const A wc = p.weight ? static_cast<A>(p.weight[first + j]) : A(1);
      sums.s1 = simd::madd(wc, r.s1, sums.s1), sums.s2 = simd::madd(wc, r.s2, sums.s2);
      if (partial) partial[first + j] += r.s2, partial[param_size() + first + j] += r.s1;
    }
    return sums;
  }
  // Two-level summation down each column (blocks of rows, then the panel) keeps long columns' error
  // small.
  void reduce_panel(const Columns& k, Index g0, Index r0, Index rows, Index cols, Partial* out) const {
    constexpr std::size_t kCols = detail::kPanelCols<A>;
    const P* w = p.affine_axis == AffineAxis::Element ? p.weight : nullptr;
    A sum_g[kCols] = {}, sum_gt[kCols] = {}, block_g[kCols], block_gt[kCols];
    const Index block = detail::panel_block_rows<T>(cols);
    for (Index b0 = 0; b0 < rows; b0 += block) {
      const Index at = (r0 + b0) * s.groups + g0;
      std::fill(block_g, block_g + cols, A(0));
      std::fill(block_gt, block_gt + cols, A(0));
      backward_cols_sums(x + at, dy + at, std::min(block, rows - b0), cols, s.groups, k.view(), w ? w + r0 + b0 : w,
                         block_g, block_gt, fetch ? s.outer - r0 - b0 : 0);
      for (Index j = 0; j < cols; ++j) sum_g[j] += block_g[j], sum_gt[j] += block_gt[j];
    }
    // sum(g * xhat) = rstd * sum(g * t) (backward_cols_sums)
    for (Index j = 0; j < cols; ++j) out[j] = combine(out[j], Partial{sum_g[j], sum_gt[j] * k.rstd[j]});
  }
  Coef finish(Index g, Coef c, const Partial& sums) const {
    if (sums_out.sum_dy) {
      sums_out.sum_dy[g] = sums.s1, sums_out.sum_dy_xhat[g] = sums.s2;
      return c;
    }
    if (p.affine_axis == AffineAxis::Group && dweight) dweight[g] = static_cast<P>(sums.s2);
    if (p.affine_axis == AffineAxis::Group && dbias) dbias[g] = static_cast<P>(sums.s1);
    return batch_stats ? with_means(g, c, sums, s.group_size()) : c;
  }
  Coef given(Index g) const {
    return with_means(g, start(g), Partial{sums_in.sum_dy[g], sums_in.sum_dy_xhat[g]}, sums_in.count);
  }
  Coef with_means(Index g, Coef c, const Partial& sums, Index n) const {
    c.mean_g = p.centered ? sums.s1 / static_cast<A>(n) : A(0);
    c.mean_gx = sums.s2 / static_cast<A>(n) * variance_term_factor(stats.rstd[g], p.eps, p.eps_inside_sqrt);
    return c;
  }

  template <int R>
  void sweep_runs(Index g, Index o, const Coef* c, Index next, A* partial) const {
    const Index at = s.run_at(o, g);
    if (p.affine_axis == AffineAxis::Channel) return sweep_channels(g, at, c[0], partial);
    const P* w = p.affine_axis == AffineAxis::Element && p.weight ? p.weight + o * s.inner : nullptr;
    if (!batch_stats) {  // dx = dy * scale (R == 1: not batchable)
      const RunNormalize<A> k{A(0), A(0), c[0].scale, A(0)};
      normalize_runs<1>(LoadX<T>{dy + at}, dx.at(at), s.inner, s.inner, &k, w, static_cast<const P*>(nullptr), stream);
      return;
    }
    A* dw = partial ? partial + o * s.inner : nullptr;
    A* db = partial ? partial + param_size() + o * s.inner : nullptr;
    backward_runs_dx<R>(x + at, dy + at, w, dx.at(at), s.inner, s.inner, c, dw, db, stream, next);
  }
  // Per channel inside a group; constant statistics (eval) leave mean_g = mean_gx = 0.
  void sweep_channels(Index g, Index at, const Coef& c, A* partial) const {
    const Index first = p.first_channel(g), len = s.inner / p.group_channels;
    const P* none = nullptr;
    if (len == 1) {
      backward_runs_dx<1>(x + at, dy + at, p.weight ? p.weight + first : none, dx.at(at), s.inner, s.inner, &c,
                          partial ? partial + first : nullptr, partial ? partial + param_size() + first : nullptr,
                          stream);
      return;
    }
    for (Index j = 0; j < p.group_channels; ++j) {
      Coef cj = c;
      cj.weight = p.weight ? static_cast<A>(p.weight[first + j]) : A(1);
      backward_runs_dx<1>(x + at + j * len, dy + at + j * len, none, dx.at(at + j * len), len, len, &cj,
                          static_cast<A*>(nullptr), static_cast<A*>(nullptr), stream);
    }
  }
  void sweep_panel(const Columns& k, Index g0, Index r0, Index rows, Index cols, A* partial, Index fetch_rows) const {
    const Index at = r0 * s.groups + g0;
    const P* w = p.affine_axis == AffineAxis::Element && p.weight ? p.weight + r0 : nullptr;
    if (batch_stats) {
      // A column per channel with a Channel affine (GroupNorm channels-last, backward_dx_groups):
      // the channel's weight multiplies dy, the group's rstd is the scale.
      A channel_weight[detail::kPanelCols<A>];
      ColsGrad<A> view = k.view();
      if (p.affine_axis == AffineAxis::Channel && p.weight) {
        for (Index j = 0; j < cols; ++j) channel_weight[j] = static_cast<A>(p.weight[p.first_channel(g0 + j)]);
        view.weight = channel_weight;
      }
      backward_cols_dx(x + at, dy + at, dx.at(at), rows, cols, s.groups, view, w, partial ? partial + r0 : nullptr,
                       partial ? partial + param_size() + r0 : nullptr, stream, fetch ? fetch_rows : 0);
    } else {
      const A* zero = detail::kZeros<A>;
      normalize_cols(LoadX<T>{dy + at}, dx.at(at), rows, cols, s.groups, ColsNormalize<A>{zero, zero, k.scale, zero}, w,
                     static_cast<const P*>(nullptr), stream, fetch ? fetch_rows : 0);
    }
  }
};

}  // namespace normkit::core
