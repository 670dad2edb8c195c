// normkit/core/row_kernels.hpp — kernels along one contiguous run of n values.
//
// A run is a LayerNorm/RMSNorm row in a RowMajor tensor, one plane (H*W values) of one channel of
// an NCHW BatchNorm input, or a channel's segment of a group. Each kernel is one sweep whose
// formula is written once over V (a packet, or one value for the head and tail; fusion.hpp). With
//     d    = (x - mean) - mean_lo            (mean as a hi/lo pair, see moments.hpp)
//     xhat = d * rstd
// forward is  y = d * scale * w[i] + b[i]   (w, b optional per-element arrays; shift when no b)
// backward is dx = scale * (g - mean_g - xhat * mean_gx),  g = dy * w[i]  (dy * weight without w)
//   (without w every factor is per run and folds: fold_grad, folded_dx below; the column kernels too)
// LayerNorm passes scale = rstd and its weight/bias as w, b; BatchNorm folds its per-channel weight
// and bias into scale = rstd * weight[c] and shift = bias[c]; GroupNorm does the same per channel
// segment. x is read through a load prologue and y, dx written through a store epilogue (fusion.hpp).
// Types: T stores x, y, dy, dx; P stores the parameters w, b (T, or float beside bfloat16/half
// data); A accumulates (simd.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "fusion.hpp"
#include "moments.hpp"
#include "simd.hpp"

namespace normkit::core {

// Which sums of a run run_sums_impl takes: both, around a shift (the moments); or one, of the
// values as they are (shift 0, not subtracted: the first pass of the two-pass moments, RMSNorm's
// sum of squares).
enum class RunTerms { Moments, Sum, Squares };

// s1 = sum(x * scale - shift), s2 = sum((x * scale - shift)^2), as Terms asks. Four independent
// accumulators per sum: they hide the add latency and split the run into interleaved partial sums,
// which also cuts rounding error.
template <RunTerms Terms, bool Scaled, class A, class Load>
Sums<A> run_sums_impl(Load x, Index n, A shift, A scale) {
  using namespace simd;
  constexpr Index W = width<A>;
  constexpr bool kS1 = Terms != RunTerms::Squares, kS2 = Terms != RunTerms::Sum;
  const Splat<A> s(shift), neg_s(-shift), k(scale);
  // x * scale - shift is one rounding either way. Unscaled, every other packet takes it as an FMA
  // where the target has one: d and s1 are adds and s2 an FMA, and a Zen 4 runs one 512-bit add
  // and one 512-bit FMA per cycle (on its separate add and FMA pipes): 1.5 cycles a packet instead
  // of 2. Where adds and FMAs share ports (Intel, Arm) it changes nothing. docs/benchmarks.md,
  // "The statistics' adds and FMAs on separate pipes".
  const auto step = [&](Index i, auto& s1, auto& s2, bool as_fma) {
    using V = std::decay_t<decltype(s1)>;
    const V v = x.template load<V>(i);
    V d = v;
    if constexpr (Terms != RunTerms::Moments) {
      if constexpr (Scaled) d = mul(v, as<V>(k));
    } else if (Scaled || (as_fma && kFusedMadd)) {
      d = madd(v, as<V>(k), as<V>(neg_s));
    } else {
      d = sub(v, as<V>(s));
    }
    if constexpr (kS1) s1 = add(s1, d);
    if constexpr (kS2) s2 = madd(d, d, s2);
  };
  packet<A> a1[4], a2[4];
  NORMKIT_UNROLL
  for (int j = 0; j < 4; ++j) a1[j] = a2[j] = set1<A>(A(0));
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    NORMKIT_UNROLL
    for (int j = 0; j < 4; ++j) step(i + j * W, a1[j], a2[j], j % 2 == 1);
  }
  for (; i + W <= n; i += W) step(i, a1[0], a2[0], false);
  Sums<A> r{A(0), A(0)};
  if constexpr (kS1) r.s1 = sum(add(add(a1[0], a1[1]), add(a1[2], a1[3])));
  if constexpr (kS2) r.s2 = sum(add(add(a2[0], a2[1]), add(a2[2], a2[3])));
  for (; i < n; ++i) step(i, r.s1, r.s2, false);
  return r;
}

// scale is 1, or a power of two for data at the edges of the range (moments.hpp).
template <class A, class Load, if_fusion<Load> = 0>
Sums<A> run_sums(Load x, Index n, A shift, A scale = A(1)) {
  return scale == A(1) ? run_sums_impl<RunTerms::Moments, false>(x, n, shift, scale)
                       : run_sums_impl<RunTerms::Moments, true>(x, n, shift, scale);
}
template <class A, class T>
Sums<A> run_sums(const T* x, Index n, A shift, A scale = A(1)) {
  return run_sums(LoadX<T>{x}, n, shift, scale);
}

// sum(x * scale) alone: the first pass of the two-pass moments (stats.hpp).
template <class A, class Load>
A run_sum(Load x, Index n, A scale = A(1)) {
  return scale == A(1) ? run_sums_impl<RunTerms::Sum, false>(x, n, A(0), scale).s1
                       : run_sums_impl<RunTerms::Sum, true>(x, n, A(0), scale).s1;
}

// sum((x * scale)^2) alone: the moments about 0 (RMSNorm).
template <class A, class Load>
A run_sum_squares(Load x, Index n, A scale = A(1)) {
  return scale == A(1) ? run_sums_impl<RunTerms::Squares, false>(x, n, A(0), scale).s2
                       : run_sums_impl<RunTerms::Squares, true>(x, n, A(0), scale).s2;
}

// max |x| over a run, for the rare path that rescales a block (moments.hpp). NaN may or may not
// win; the caller only needs a power of two for finite data.
template <class A, class Load>
A run_max_abs(Load x, Index n) {
  using namespace simd;
  constexpr Index W = width<A>;
  const auto step = [&](Index i, auto& top) {
    using V = std::decay_t<decltype(top)>;
    top = max(top, abs(x.template load<V>(i)));
  };
  // Four running maxima, as run_sums_impl keeps four sums: with one, each packet waits on the
  // latency of the max before it.
  packet<A> t[4];
  NORMKIT_UNROLL
  for (int j = 0; j < 4; ++j) t[j] = set1<A>(A(0));
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    NORMKIT_UNROLL
    for (int j = 0; j < 4; ++j) step(i + j * W, t[j]);
  }
  for (; i + W <= n; i += W) step(i, t[0]);
  A m = max_lane(max(max(t[0], t[1]), max(t[2], t[3])));
  for (; i < n; ++i) step(i, m);
  return m;
}

// Stores at `to` what the load prologue keeps of each of the run's n values (LoadResidual: h = x +
// alpha * r, rounded to T): the residual sum formed once, for passes that then read it (NormForward).
template <class A, class Load, class T>
void keep_run(Load load, Index n, T* to) {
  const auto x = load.held();  // a kernel that stores holds the prologue's fields (fusion.hpp)
  for_lanes<A>(n, [&](Index i, auto lane) NORMKIT_LANE { x.template keep_value<decltype(lane)>(i, to); });
}

// Per-run coefficients of the forward sweep.
template <class A>
struct RunNormalize {
  A mean, mean_lo, scale, shift;
};

// R runs at r * stride (r < R) with their own coefficients and the same w, b: each packet of w and
// b is loaded once for the R runs (LayerNorm rows in cache were bound by those loads).
template <int R, bool HasW, bool HasB, class A, class Load, class Store, class P>
void normalize_runs_impl(Load load, Store y, Index n, Index stride, const RunNormalize<A>* c, const P* w, const P* b,
                         bool stream, Index next) {
  using namespace simd;
  const auto x = load.held();   // a kernel that stores holds the prologue's fields (fusion.hpp)
  constexpr std::size_t N = R;  // the arrays' bound: GCC's -Wsign-conversion flags a signed one
  Splat<A> mean[N], lo[N], scale[N], shift[N];
  NORMKIT_UNROLL
  for (int r = 0; r < R; ++r)
    mean[r] = Splat<A>(c[r].mean), lo[r] = Splat<A>(c[r].mean_lo), scale[r] = Splat<A>(c[r].scale),
    shift[r] = Splat<A>(c[r].shift);
  for_stream_lanes<A>(n, stream_span<A>(y.base(), n, stream), [&](Index i, auto lane, auto streamed) NORMKIT_LANE {
    using V = decltype(lane);
    if constexpr (!is_scalar<V>)
      if (next) {
        NORMKIT_UNROLL
        for (int r = 0; r < R; ++r) x.prefetch(next + r * stride + i);
      }
    const V wi = HasW ? loadv<V>(w + i) : V{}, bi = HasB ? loadv<V>(b + i) : V{};
    NORMKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const V xv = x.template load_kept<V>(r * stride + i, streamed);
      const V v = mul(sub(sub(xv, as<V>(mean[r])), as<V>(lo[r])), as<V>(scale[r]));
      const V offset = HasB ? bi : as<V>(shift[r]);
      y.store(r * stride + i, HasW ? madd(v, wi, offset) : add(v, offset), streamed);
    }
  });
}

// y[i] = ((x[i] - mean) - mean_lo) * scale * w[i] + b[i] for R runs (R = 1 or 4) of n values, run r
// at r * stride with coefficients c[r]; w may be null (1), and b null (then the scalar shift is
// added instead: per-element bias and per-group shift are never both present).
// stream: non-temporal stores for y (simd.hpp). next (0: none): the R runs at x + next (same stride)
// are read next by the caller and are prefetched into L2 meanwhile, so that memory serves that read
// while this sweep mostly writes.
template <int R = 1, class A, class Load, class Store, class P, if_fusion<Load> = 0>
void normalize_runs(Load x, Store y, Index n, Index stride, const RunNormalize<A>* c, const P* w, const P* b,
                    bool stream = false, Index next = 0) {
  if (w && b) normalize_runs_impl<R, true, true>(x, y, n, stride, c, w, b, stream, next);
  else if (w) normalize_runs_impl<R, true, false>(x, y, n, stride, c, w, b, stream, next);
  else if (b) normalize_runs_impl<R, false, true>(x, y, n, stride, c, w, b, stream, next);
  else normalize_runs_impl<R, false, false>(x, y, n, stride, c, w, b, stream, next);
}
template <int R = 1, class A, class T, class P>
void normalize_runs(const T* x, T* y, Index n, Index stride, const RunNormalize<A>* c, const P* w, const P* b,
                    bool stream = false, Index next = 0) {
  normalize_runs<R>(LoadX<T>{x}, StoreY<T>{y}, n, stride, c, w, b, stream, next);
}
template <class A, class T, class P>
void normalize_run(const T* x, T* y, Index n, const RunNormalize<A>& c, const P* w, const P* b, bool stream = false) {
  normalize_runs<1>(LoadX<T>{x}, StoreY<T>{y}, n, n, &c, w, b, stream);
}

// Per-run coefficients of the backward sweeps. rstd builds xhat; scale multiplies dx; weight is the
// run's constant weight when there is no per-element w (a GroupNorm channel; 1 otherwise).
template <class A>
struct RunGrad {
  A mean, mean_lo, rstd, scale, mean_g, mean_gx;
  A weight = A(1);
};

// s1 = sum(g), s2 = sum(g * xhat) with g = dy * w[i] (w null: g = dy), in one pass.
template <class A, class T, class P>
Sums<A> backward_run_sums(const T* x, const T* dy, const P* w, Index n, const RunGrad<A>& c) {
  using namespace simd;
  constexpr Index W = width<A>;
  const Splat<A> mean(c.mean), lo(c.mean_lo), rstd(c.rstd);
  const auto step = [&](Index i, auto& sg, auto& sgx) {
    using V = std::decay_t<decltype(sg)>;
    const V xhat = mul(sub(sub(loadv<V>(x + i), as<V>(mean)), as<V>(lo)), as<V>(rstd));
    V g = loadv<V>(dy + i);
    if (w) g = mul(g, loadv<V>(w + i));
    sg = add(sg, g);
    sgx = madd(g, xhat, sgx);
  };
  packet<A> sg[2], sgx[2];
  for (int k = 0; k < 2; ++k) sg[k] = sgx[k] = set1<A>(A(0));
  Index i = 0;
  for (; i + 2 * W <= n; i += 2 * W) step(i, sg[0], sgx[0]), step(i + W, sg[1], sgx[1]);
  for (; i + W <= n; i += W) step(i, sg[0], sgx[0]);
  Sums<A> r{sum(add(sg[0], sg[1])), sum(add(sgx[0], sgx[1]))};
  for (; i < n; ++i) step(i, r.s1, r.s2);
  return r;
}

// R runs at r * stride (r < R) sharing w, dweight and dbias: the parameter gradients are loaded
// and stored once per packet for the R runs (for LayerNorm backward in cache, those loads and
// stores were the bound). Each element still adds the runs in order: the sums equal R single calls.
// Grads: dweight and dbias are given (a caller may want dx alone: backward_groups without them).
template <int R, bool Grads, class A, class T, class P, class Store>
void backward_runs_dx_weighted(const T* x, const T* dy, const P* w, Store dx, Index n, Index stride,
                               const RunGrad<A>* c, A* dweight, A* dbias, bool stream, Index next) {
  using namespace simd;
  constexpr std::size_t N = R;  // the arrays' bound (see normalize_runs_impl)
  Splat<A> mean[N], lo[N], rstd[N], scale[N], neg_mean_g[N], neg_mean_gx[N];
  NORMKIT_UNROLL
  for (int r = 0; r < R; ++r) {
    mean[r] = Splat<A>(c[r].mean), lo[r] = Splat<A>(c[r].mean_lo), rstd[r] = Splat<A>(c[r].rstd);
    scale[r] = Splat<A>(c[r].scale), neg_mean_g[r] = Splat<A>(-c[r].mean_g), neg_mean_gx[r] = Splat<A>(-c[r].mean_gx);
    eigen_assert(c[r].weight == A(1));  // a per-element weight comes without a run's own
  }
  for_stream_lanes<A>(n, stream_span<A>(dx.base(), n, stream), [&](Index i, auto lane, auto streamed) NORMKIT_LANE {
    using V = decltype(lane);
    if constexpr (!is_scalar<V>)
      if (next) {
        NORMKIT_UNROLL
        for (int r = 0; r < R; ++r) {
          const Index at = next + r * stride + i;
          prefetch_l2(x + at), prefetch_l2(dy + at), dx.prefetch(at);  // dx: what its epilogue reads (dh)
        }
      }
    const V wi = loadv<V>(w + i);
    V dw{}, db{};
    if constexpr (Grads) dw = loadv<V>(dweight + i), db = loadv<V>(dbias + i);
    NORMKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const Index at = r * stride + i;
      const V xhat = mul(sub(sub(loadv<V>(x + at), as<V>(mean[r])), as<V>(lo[r])), as<V>(rstd[r]));
      const V d = loadv<V>(dy + at);
      const V centered = madd(d, wi, as<V>(neg_mean_g[r]));  // g - mean_g
      if constexpr (Grads) dw = madd(d, xhat, dw), db = add(db, d);
      dx.store(at, mul(as<V>(scale[r]), madd(xhat, as<V>(neg_mean_gx[r]), centered)), streamed);
    }
    if constexpr (Grads) storev(dweight + i, dw), storev(dbias + i, db);
  });
}

// The backward without per-element (or per-row) parameters: every factor is per run (or per
// column) and folds into three coefficients,
//   dx = t * (scale * rstd * -mean_gx) + (dy * (scale * weight) + scale * -mean_g),  t = (x - mean) - mean_lo
// two FMAs per value. Over V, one value (a run's coefficients) or a packet (a strip of columns,
// col_kernels.hpp): the same operations in the same order.
template <class V>
struct FoldedGrad {
  V per_t, per_dy, constant;
};
template <class V>
EIGEN_ALWAYS_INLINE FoldedGrad<V> fold_grad(const V& scale, const V& rstd, const V& neg_mean_g, const V& neg_mean_gx,
                                            const V& weight) {
  using namespace simd;
  return {mul(mul(scale, rstd), neg_mean_gx), mul(scale, weight), mul(scale, neg_mean_g)};
}
template <class V>
EIGEN_ALWAYS_INLINE V folded_dx(const V& t, const V& dy, const V& per_t, const V& per_dy, const V& constant) {
  using namespace simd;
  return madd(t, per_t, madd(dy, per_dy, constant));
}

// dx without per-element parameters (BatchNorm, GroupNorm and InstanceNorm channels; a run's
// constant weight, 1 or its channel's), folded per run.
template <int R, class A, class T, class Store>
void backward_runs_dx_folded(const T* x, const T* dy, Store dx, Index n, Index stride, const RunGrad<A>* c, bool stream,
                             Index next) {
  using namespace simd;
  constexpr std::size_t N = R;  // the arrays' bound (see normalize_runs_impl)
  Splat<A> mean[N], lo[N], per_t[N], per_dy[N], constant[N];
  NORMKIT_UNROLL
  for (int r = 0; r < R; ++r) {
    const FoldedGrad<A> f = fold_grad(c[r].scale, c[r].rstd, -c[r].mean_g, -c[r].mean_gx, c[r].weight);
    mean[r] = Splat<A>(c[r].mean), lo[r] = Splat<A>(c[r].mean_lo);
    per_t[r] = Splat<A>(f.per_t), per_dy[r] = Splat<A>(f.per_dy), constant[r] = Splat<A>(f.constant);
  }
  for_stream_lanes<A>(n, stream_span<A>(dx.base(), n, stream), [&](Index i, auto lane, auto streamed) NORMKIT_LANE {
    using V = decltype(lane);
    if constexpr (!is_scalar<V>)
      if (next) {
        NORMKIT_UNROLL
        for (int r = 0; r < R; ++r) {
          const Index at = next + r * stride + i;
          prefetch_l2(x + at), prefetch_l2(dy + at), dx.prefetch(at);  // dx: what its epilogue reads (dh)
        }
      }
    NORMKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const Index at = r * stride + i;
      const V t = sub(sub(loadv<V>(x + at), as<V>(mean[r])), as<V>(lo[r]));
      dx.store(at, folded_dx(t, loadv<V>(dy + at), as<V>(per_t[r]), as<V>(per_dy[r]), as<V>(constant[r])), streamed);
    }
  });
}

// dx[i] = scale * (g - mean_g - xhat * mean_gx), g = dy * w[i], for R runs (R = 1 or 4) of n values,
// run r at r * stride (x, dy and dx alike) with coefficients c[r]. With w (LayerNorm, RMSNorm) and
// dweight, dbias (both or neither) it also accumulates the runs' parameter gradients:
// dweight[i] += dy * xhat, dbias[i] += dy.
// next: as for normalize_runs, for x and dy.
template <int R = 1, class A, class T, class P, class Store, if_fusion<Store> = 0>
void backward_runs_dx(const T* x, const T* dy, const P* w, Store dx, Index n, Index stride, const RunGrad<A>* c,
                      A* dweight, A* dbias, bool stream = false, Index next = 0) {
  eigen_assert((dweight == nullptr) == (dbias == nullptr));
  if (w && dweight) backward_runs_dx_weighted<R, true>(x, dy, w, dx, n, stride, c, dweight, dbias, stream, next);
  else if (w) backward_runs_dx_weighted<R, false>(x, dy, w, dx, n, stride, c, dweight, dbias, stream, next);
  else backward_runs_dx_folded<R>(x, dy, dx, n, stride, c, stream, next);
}
template <int R = 1, class A, class T, class P>
void backward_runs_dx(const T* x, const T* dy, const P* w, T* dx, Index n, Index stride, const RunGrad<A>* c,
                      A* dweight, A* dbias, bool stream = false, Index next = 0) {
  backward_runs_dx<R>(x, dy, w, StoreY<T>{dx}, n, stride, c, dweight, dbias, stream, next);
}

}  // namespace normkit::core
