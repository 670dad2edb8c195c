// normkit/core/softmax_policies.hpp — softmax, log-softmax and cross-entropy as policies of
// run_groups (iterate.hpp), over the kernels of softmax_kernels.hpp.
//
// A group is the set of values one softmax runs over (a row of logits, or a column when the class
// axis is not the fastest in memory). Forward, per group:
//   reduce:  MaxSum{max, sum exp(x - max)} per run (run_max_sum; a group that is one run short
//            enough: run_max, then run_exp_sum, which keeps each exp(x - max) for the sweep) or per
//            panel column (cols_max_sum); combine = merge (rescale both sums to the larger max)
//   finish:  the sweep's coefficients: {max, 1/sum} (softmax), {max, log sum} (log-softmax), or
//            cross-entropy's loss and gradient factors (below)
//   sweep:   y = exp(x - max) / sum,  y = x - max - log sum,  or dlogits.
// Backward, per group: reduce = sum(dy * y) (softmax) or sum(dy) (log-softmax), combine = add;
// sweep dx = y * (dy - s) or dy - exp(y) * s.
// Cross-entropy, per group with target t, class weights w (1 without), W = sum(w), C classes,
// eps = label smoothing, L = log sum:
//   loss = (1 - eps) * w[t] * ((max - x[t]) + L) + eps / C * sum_c w[c] * ((max - x[c]) + L)
//   dlogits[c] = g * ((a + b W) * p[c] - b * w[c] - a * [c == t]),  a = (1 - eps) w[t], b = eps / C,
// g the group's share of the upstream gradient (dloss / weight sum for Mean); an ignored target has
// loss 0 and g = 0. The sweep writes every class with the first two terms; the target's element is
// then rewritten from x[t] as finish read it (the sweep may have overwritten x: in place).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fusion.hpp"
#include "iterate.hpp"
#include "softmax_kernels.hpp"

namespace normkit::core {

// Cross-entropy's per-group inputs and outputs, indexed by group (memory order of this call's shape).
template <class A, class P>
struct CrossEntropyGroups {
  const std::int64_t* target = nullptr;
  std::int64_t ignore_index = -100;
  const P* weight = nullptr;  // per class, or null
  double smoothing = 0;
  double weight_sum = 0;     // W: sum of the class weights (C without)
  const A* scale = nullptr;  // per group g (gradient), or null: no sweep
  double* loss = nullptr;    // per group, or null
};

template <SoftmaxSweep Mode, class Acc, class Load, class Store, class P = Acc>
struct SoftmaxForward {
  using A = Acc;
  using T = typename Load::value_type;
  using Partial = MaxSum<A>;
  struct Coef : SoftmaxCoef<A> {
    A target_x = A(0), gamma = A(0);
    Index target = -1;  // cross-entropy: the element to rewrite (its row in a column shape)
  };
  using Columns = detail::CoefColumns<A, Coef>;
  static constexpr Index inputs = 1;
  static constexpr bool CE = Mode == SoftmaxSweep::CrossEntropy;

  Load x{};
  Store y{};
  GroupShape s;
  bool stream = false;
  CrossEntropyGroups<A, P> ce;

  static Partial combine(const Partial& a, const Partial& b) { return merge(a, b); }
  bool batchable() const { return false; }
  Index partial_size() const { return 0; }
  void merge_partials(const A*) const {}
  void empty(Passes) const {}

  Coef start(Index) const { return Coef{}; }
  // A group that is one run of at most the scratch row's size takes its max first, then one
  // exponential per value for the sum (run_max, run_exp_sum), not the online pass's 1 + 1/4: the
  // run is in cache for the second read. Softmax and cross-entropy sweeps scale the exponentials
  // (scale_exp), kept in the scratch row, on targets with a fused madd; otherwise none are kept
  // (log-softmax's sweep takes none, loss-only cross-entropy has no sweep). scale_exp relies on
  // batchable() being false: each group's reduce is followed by its own sweep, on the same thread,
  // before the next group's reduce. Log-softmax and cross-entropy need log S's digits near 0 (run_exp_sum's
  // ExactRest).
  bool max_first() const { return s.outer == 1 && s.inner * Index(sizeof(A)) <= tuning::kSoftmaxScratchBytes; }
  bool scale_exp() const {
    return simd::kFusedMadd && Mode != SoftmaxSweep::LogSoftmax && (!CE || ce.scale) && max_first();
  }
  // Where the run at `at` keeps its exponentials for its sweep (null: not kept); its reduce and its
  // sweep must get the same row.
  A* kept_exp(Index at) const { return scale_exp() ? scratch_row<A>(s.inner, x.at(at).base()) : nullptr; }
  Partial reduce_run(const Coef&, Index, Index, Index at, Index, A*) const {
    if (!max_first()) return run_max_sum<A>(x.at(at), s.inner);
    return run_exp_sum<A, Mode != SoftmaxSweep::Softmax>(x.at(at), s.inner, run_max<A>(x.at(at), s.inner),
                                                         kept_exp(at));
  }
  void reduce_panel(const Columns&, Index g0, Index r0, Index rows, Index cols, Partial* out) const {
    const Index at = r0 * s.groups + g0;
    cols_max_sum<A>(x.at(at), rows, cols, s.groups, out);
  }
  Coef finish(Index g, const Coef&, const Partial& p) const {
    Coef c;
    c.max = p.max;
    if constexpr (Mode == SoftmaxSweep::Softmax) set_k(c, 1 / (p.sum + p.lo), /*relative=*/true);
    else if constexpr (Mode == SoftmaxSweep::LogSoftmax) set_k(c, log_sum(p), /*relative=*/false);
    else return finish_ce(g, p, c);
    return c;
  }
  // log(sum + lo), keeping lo's digits when sum is near 1
  static double log_sum(const Partial& p) { return std::log(p.sum) + p.lo / p.sum; }
  // k rounded to A, and its rounding error (relative to k for the exp sweeps; 0 where not finite).
  static void set_k(Coef& c, double k, bool relative) {
    c.k = static_cast<A>(k);
    const double lo = k - static_cast<double>(c.k);
    c.k_lo = !std::isfinite(lo) ? A(0)
             : relative         ? (c.k != A(0) ? static_cast<A>(lo / static_cast<double>(c.k)) : A(0))
                                : static_cast<A>(lo);
  }
  Coef finish_ce(Index g, const Partial& p, Coef c) const {
    const std::int64_t t = ce.target[g];
    if (t == ce.ignore_index) {
      if (ce.loss) ce.loss[g] = 0;
      return c;  // k = beta = 0: dlogits 0
    }
    const Index ti = static_cast<Index>(t);
    const Index at = s.inner > 1 ? s.run_at(0, g) + ti : s.run_at(ti, g);
    const A xt = x.template load<A>(at);
    const double eps = ce.smoothing, wt = ce.weight ? static_cast<double>(static_cast<A>(ce.weight[ti])) : 1.0;
    const double m = static_cast<double>(p.max), l = log_sum(p);
    if (ce.loss) {  // max - x taken before adding log S: logits of 1e30 leave their loss's digits
      double loss = (1 - eps) * wt * ((m - static_cast<double>(xt)) + l);
      if (eps != 0) {  // sum_c w[c] (max - x[c] + log S), read back from the group (in cache)
        double smooth = 0;
        for (Index k = 0; k < s.group_size(); ++k) {
          const double wk = ce.weight ? static_cast<double>(static_cast<A>(ce.weight[k])) : 1.0;
          const double xk = static_cast<double>(x.template load<A>(s.inner > 1 ? s.run_at(0, g) + k : s.run_at(k, g)));
          smooth = simd::madd(wk, m - xk, smooth);
        }
        loss = simd::madd(eps / static_cast<double>(s.group_size()), simd::madd(l, ce.weight_sum, smooth), loss);
      }
      ce.loss[g] = loss;
    }
    if (!ce.scale) return c;
    const double gs = static_cast<double>(ce.scale[g]), a = (1 - eps) * wt,
                 b = eps / static_cast<double>(s.group_size());
    set_k(c, gs * simd::madd(b, ce.weight_sum, a) / (p.sum + p.lo), /*relative=*/true);
    c.beta = static_cast<A>(gs * b);
    c.gamma = static_cast<A>(gs * a);
    c.target_x = xt;
    c.target = ti;
    return c;
  }
  Coef given(Index) const { return Coef{}; }

  // dlogits of the target: the sweep's value minus gamma, from x[t] as finish read it.
  A target_value(const Coef& c) const {
    using namespace simd;
    const A p = exp_diff(c.target_x, c.max, c.k, c.k_lo);
    const A w = ce.weight ? static_cast<A>(ce.weight[c.target]) : A(1);
    return madd(w, A(-c.beta), p) - c.gamma;
  }

  template <int R>
  void sweep_runs(Index g, Index o, const Coef* c, Index next, A*) const {
    for (int r = 0; r < R; ++r) {
      const Index at = s.run_at(o, g + r);
      softmax_sweep_run<Mode>(x.at(at), y.at(at), s.inner, static_cast<const SoftmaxCoef<A>&>(c[r]),
                              CE ? ce.weight : static_cast<const P*>(nullptr), kept_exp(at), stream, next);
      if constexpr (CE)
        if (c[r].target >= 0) y.at(at).store(c[r].target, target_value(c[r]), /*stream=*/false);
    }
  }
  void sweep_panel(const Columns& columns, Index g0, Index r0, Index rows, Index cols, A*, Index) const {
    constexpr std::size_t kCols = detail::kPanelCols<A>;
    const Coef* c = columns.c;
    A max[kCols], k[kCols], k_lo[kCols], neg_beta[kCols];
    for (Index j = 0; j < cols; ++j) max[j] = c[j].max, k[j] = c[j].k, k_lo[j] = c[j].k_lo, neg_beta[j] = -c[j].beta;
    const Index at = r0 * s.groups + g0;
    softmax_sweep_cols<Mode>(x.at(at), y.at(at), rows, cols, s.groups, max, k, k_lo, neg_beta,
                             CE && ce.weight ? ce.weight + r0 : static_cast<const P*>(nullptr), stream);
    if constexpr (CE)
      for (Index j = 0; j < cols; ++j)
        if (c[j].target >= r0 && c[j].target < r0 + rows)
          y.at(at).store((c[j].target - r0) * s.groups + j, target_value(c[j]), /*stream=*/false);
  }
};

// Backward of softmax (Softmax = true) or log-softmax, from y and dy.
template <bool Softmax, class Acc, class T_, class Store>
struct SoftmaxBackward {
  using A = Acc;
  using T = T_;
  using Partial = A;
  using Coef = A;
  using Columns = detail::CoefColumns<A, Coef>;
  static constexpr Index inputs = 2;

  const T* y = nullptr;
  const T* dy = nullptr;
  Store dx{};
  GroupShape s;
  bool stream = false;

  static Partial combine(const Partial& a, const Partial& b) { return a + b; }
  bool batchable() const { return false; }
  Index partial_size() const { return 0; }
  void merge_partials(const A*) const {}
  void empty(Passes) const {}

  Coef start(Index) const { return A(0); }
  Partial reduce_run(const Coef&, Index, Index, Index at, Index, A*) const {
    return run_grad_sum<Softmax, A>(y + at, dy + at, s.inner);
  }
  void reduce_panel(const Columns&, Index g0, Index r0, Index rows, Index cols, Partial* out) const {
    constexpr std::size_t kCols = detail::kPanelCols<A>;
    A sums[kCols] = {};
    const Index at = r0 * s.groups + g0;
    cols_grad_sum<Softmax, A>(y + at, dy + at, rows, cols, s.groups, sums);
    for (Index j = 0; j < cols; ++j) out[j] = combine(out[j], sums[j]);
  }
  Coef finish(Index, const Coef&, const Partial& p) const { return p; }
  Coef given(Index) const { return A(0); }

  template <int R>
  void sweep_runs(Index g, Index o, const Coef* c, Index, A*) const {
    for (int r = 0; r < R; ++r) {
      const Index at = s.run_at(o, g + r);
      grad_sweep_run<Softmax>(y + at, dy + at, dx.at(at), s.inner, c[r], stream);
    }
  }
  void sweep_panel(const Columns& c, Index g0, Index r0, Index rows, Index cols, A*, Index) const {
    const Index at = r0 * s.groups + g0;
    grad_sweep_cols<Softmax>(y + at, dy + at, dx.at(at), rows, cols, s.groups, c.c, stream);
  }
};

}  // namespace normkit::core
