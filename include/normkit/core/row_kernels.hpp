// normkit/core/row_kernels.hpp — kernels along one contiguous run of n values.
//
// A run is a LayerNorm/RMSNorm row in a RowMajor tensor, or one plane (H*W values) of one channel
// of an NCHW BatchNorm input. Each kernel is one sweep: a vector body of Eigen packets and a scalar
// tail for the last n % width values. With
//     d    = (x - mean) - mean_lo            (mean as a hi/lo pair, see moments.hpp)
//     xhat = d * rstd
// forward is  y = d * scale * w[i] + b[i]   (w, b optional per-element arrays; shift when no b)
// backward is dx = scale * (g - mean_g - xhat * mean_gx),  g = dy * w[i]
// LayerNorm passes scale = rstd and its weight/bias as w, b; BatchNorm folds its per-channel weight
// and bias into scale = rstd * weight[c] and shift = bias[c].
// Types: T stores x, y, dy, dx; P stores the parameters w, b (T, or float beside bfloat16/half
// data); A accumulates (simd.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "moments.hpp"
#include "simd.hpp"

namespace normkit::core {

template <bool Squares, bool Scaled, class A, class T>
Sums<A> run_sums_impl(const T* x, Index n, A shift, A scale) {
  using namespace simd;
  constexpr Index W = width<A>;
  const packet<A> s = set1<A>(shift), neg_s = set1<A>(-shift), k = set1<A>(scale);
  packet<A> a1[4], a2[4];
  for (int j = 0; j < 4; ++j) a1[j] = a2[j] = set1<A>(A(0));
  const auto value = [&](Index at) {
    const packet<A> v = load<A>(x + at);
    return Scaled ? madd(v, k, neg_s) : sub(v, s);
  };
  Index i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    for (int j = 0; j < 4; ++j) {
      const packet<A> d = value(i + j * W);
      a1[j] = add(a1[j], d);
      if constexpr (Squares) a2[j] = madd(d, d, a2[j]);
    }
  }
  for (; i + W <= n; i += W) {
    const packet<A> d = value(i);
    a1[0] = add(a1[0], d);
    if constexpr (Squares) a2[0] = madd(d, d, a2[0]);
  }
  Sums<A> r{sum(add(add(a1[0], a1[1]), add(a1[2], a1[3]))), A(0)};
  if constexpr (Squares) r.s2 = sum(add(add(a2[0], a2[1]), add(a2[2], a2[3])));
  for (; i < n; ++i) {
    const A v = load_scalar<A>(x + i), d = Scaled ? madd(v, scale, -shift) : v - shift;
    r.s1 += d;
    if constexpr (Squares) r.s2 = madd(d, d, r.s2);
  }
  return r;
}

// s1 = sum(x * scale - shift), s2 = sum((x * scale - shift)^2). scale is 1, or a power of two for
// data at the edges of the range (moments.hpp). Four independent accumulators per sum: they hide
// the add latency and split the run into interleaved partial sums, which also cuts rounding error.
template <class A, class T>
Sums<A> run_sums(const T* x, Index n, A shift, A scale = A(1)) {
  return scale == A(1) ? run_sums_impl<true, false>(x, n, shift, scale) : run_sums_impl<true, true>(x, n, shift, scale);
}

// sum(x * scale) alone: the first pass of the two-pass moments (rescaled blocks, groups.hpp).
template <class A, class T>
A run_sum(const T* x, Index n, A scale = A(1)) {
  return scale == A(1) ? run_sums_impl<false, false>(x, n, A(0), scale).s1
                       : run_sums_impl<false, true>(x, n, A(0), scale).s1;
}

// max |x| over a run, for the rare path that rescales a block (moments.hpp). NaN may or may not
// win; the caller only needs a power of two for finite data.
template <class A, class T>
A run_max_abs(const T* x, Index n) {
  using namespace simd;
  constexpr Index W = width<A>;
  packet<A> top = set1<A>(A(0));
  Index i = 0;
  for (; i + W <= n; i += W) top = max(top, abs(load<A>(x + i)));
  A m = max_lane(top);
  for (const T* p = x + i; p != x + n; ++p) m = std::max(m, std::abs(load_scalar<A>(p)));
  return m;
}

// Per-run coefficients of the forward sweep.
template <class A>
struct RunNormalize {
  A mean, mean_lo, scale, shift;
};

// R runs at x + r * stride (r < R) with their own coefficients and the same w, b: each packet of w
// and b is loaded once for the R runs (LayerNorm rows in cache were bound by those loads).
template <int R, bool HasW, bool HasB, class A, class T, class P>
void normalize_runs_impl(const T* x, T* y, Index n, Index stride, const RunNormalize<A>* c, const P* w, const P* b,
                         bool stream, Index next) {
  using namespace simd;
  constexpr Index W = width<A>;
  constexpr std::size_t N = R;  // the arrays' bound: GCC's -Wsign-conversion flags a signed one
  packet<A> mean[N], lo[N], scale[N], shift[N];
  for (int r = 0; r < R; ++r)
    mean[r] = set1<A>(c[r].mean), lo[r] = set1<A>(c[r].mean_lo), scale[r] = set1<A>(c[r].scale), shift[r] = set1<A>(c[r].shift);
  const auto scalar = [&](Index i) {
    for (int r = 0; r < R; ++r) {
      const A v = ((load_scalar<A>(x + r * stride + i) - c[r].mean) - c[r].mean_lo) * c[r].scale;
      const A offset = HasB ? load_scalar<A>(b + i) : c[r].shift;
      store_scalar<T>(y + r * stride + i, HasW ? madd(v, load_scalar<A>(w + i), offset) : v + offset);
    }
  };
  Index i = 0;
  for (const Index head = aligned_head<A>(y, n, stream); i < head; ++i) scalar(i);
  for (; i + W <= n; i += W) {
    if (next)
      for (int r = 0; r < R; ++r) prefetch_l2(x + next + r * stride + i);
    const packet<A> wi = HasW ? load<A>(w + i) : packet<A>{}, bi = HasB ? load<A>(b + i) : packet<A>{};
    for (int r = 0; r < R; ++r) {
      const packet<A> v = mul(sub(sub(load<A>(x + r * stride + i), mean[r]), lo[r]), scale[r]);
      const packet<A> offset = HasB ? bi : shift[r];
      store(y + r * stride + i, HasW ? madd(v, wi, offset) : add(v, offset), stream);
    }
  }
  for (; i < n; ++i) scalar(i);
}

// y[i] = ((x[i] - mean) - mean_lo) * scale * w[i] + b[i] for R runs (R = 1 or 4) of n values, run r
// at x + r * stride with coefficients c[r]; w may be null (1), and b null (then the scalar shift is
// added instead: per-element bias and per-group shift are never both present).
// stream: non-temporal stores for y (simd.hpp). next (0: none): the R runs at x + next (same stride)
// are read next by the caller and are prefetched into L2 meanwhile, so that memory serves that read
// while this sweep mostly writes.
template <int R = 1, class A, class T, class P>
void normalize_runs(const T* x, T* y, Index n, Index stride, const RunNormalize<A>* c, const P* w, const P* b,
                    bool stream = false, Index next = 0) {
  if (w && b) normalize_runs_impl<R, true, true>(x, y, n, stride, c, w, b, stream, next);
  else if (w) normalize_runs_impl<R, true, false>(x, y, n, stride, c, w, b, stream, next);
  else if (b) normalize_runs_impl<R, false, true>(x, y, n, stride, c, w, b, stream, next);
  else normalize_runs_impl<R, false, false>(x, y, n, stride, c, w, b, stream, next);
}

template <class A, class T, class P>
void normalize_run(const T* x, T* y, Index n, const RunNormalize<A>& c, const P* w, const P* b, bool stream = false) {
  normalize_runs<1>(x, y, n, n, &c, w, b, stream);
}

// Per-run coefficients of the backward sweeps. rstd builds xhat; scale multiplies dx.
template <class A>
struct RunGrad {
  A mean, mean_lo, rstd, scale, mean_g, mean_gx;
};

// s1 = sum(g), s2 = sum(g * xhat) with g = dy * w[i] (w null: g = dy), in one pass.
template <class A, class T, class P>
Sums<A> backward_run_sums(const T* x, const T* dy, const P* w, Index n, const RunGrad<A>& c) {
  using namespace simd;
  constexpr Index W = width<A>;
  const packet<A> mean = set1<A>(c.mean), lo = set1<A>(c.mean_lo), rstd = set1<A>(c.rstd);
  packet<A> sg[2], sgx[2];
  for (int k = 0; k < 2; ++k) sg[k] = sgx[k] = set1<A>(A(0));
  const auto step = [&](Index at, int k) {
    const packet<A> xhat = mul(sub(sub(load<A>(x + at), mean), lo), rstd);
    packet<A> g = load<A>(dy + at);
    if (w) g = mul(g, load<A>(w + at));
    sg[k] = add(sg[k], g);
    sgx[k] = madd(g, xhat, sgx[k]);
  };
  Index i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    step(i, 0);
    step(i + W, 1);
  }
  for (; i + W <= n; i += W) step(i, 0);
  Sums<A> r{sum(add(sg[0], sg[1])), sum(add(sgx[0], sgx[1]))};
  for (; i < n; ++i) {
    const A xhat = ((load_scalar<A>(x + i) - c.mean) - c.mean_lo) * c.rstd;
    A g = load_scalar<A>(dy + i);
    if (w) g *= load_scalar<A>(w + i);
    r.s1 += g;
    r.s2 = madd(g, xhat, r.s2);
  }
  return r;
}

// R runs at x + r * stride (r < R) sharing w, dweight and dbias: the parameter gradients are loaded
// and stored once per packet for the R runs (for LayerNorm backward in cache, those loads and
// stores were the bound). Each element still adds the runs in order: the sums equal R single calls.
template <int R, bool HasW, class A, class T, class P>
void backward_runs_dx_impl(const T* x, const T* dy, const P* w, T* dx, Index n, Index stride, const RunGrad<A>* c,
                           A* dweight, A* dbias, bool stream, Index next) {
  using namespace simd;
  constexpr Index W = width<A>;
  constexpr std::size_t N = R;  // the arrays' bound (see normalize_runs_impl)
  packet<A> mean[N], lo[N], rstd[N], scale[N], neg_mean_g[N], neg_mean_gx[N];
  for (int r = 0; r < R; ++r) {
    mean[r] = set1<A>(c[r].mean), lo[r] = set1<A>(c[r].mean_lo), rstd[r] = set1<A>(c[r].rstd);
    scale[r] = set1<A>(c[r].scale), neg_mean_g[r] = set1<A>(-c[r].mean_g), neg_mean_gx[r] = set1<A>(-c[r].mean_gx);
  }
  const auto scalar = [&](Index i) {
    A dw = HasW ? dweight[i] : A(0), db = HasW ? dbias[i] : A(0);
    for (int r = 0; r < R; ++r) {
      const Index at = r * stride + i;
      const A xhat = ((load_scalar<A>(x + at) - c[r].mean) - c[r].mean_lo) * c[r].rstd;
      const A d = load_scalar<A>(dy + at);
      const A centered = HasW ? madd(d, load_scalar<A>(w + i), -c[r].mean_g) : d - c[r].mean_g;  // g - mean_g
      if constexpr (HasW) dw = madd(d, xhat, dw), db += d;
      store_scalar<T>(dx + at, c[r].scale * madd(xhat, -c[r].mean_gx, centered));
    }
    if constexpr (HasW) dweight[i] = dw, dbias[i] = db;
  };
  Index i = 0;
  for (const Index head = aligned_head<A>(dx, n, stream); i < head; ++i) scalar(i);
  for (; i + W <= n; i += W) {
    if (next)
      for (int r = 0; r < R; ++r) prefetch_l2(x + next + r * stride + i), prefetch_l2(dy + next + r * stride + i);
    packet<A> wi{}, dw{}, db{};
    if constexpr (HasW) wi = load<A>(w + i), dw = load<A>(dweight + i), db = load<A>(dbias + i);
    for (int r = 0; r < R; ++r) {
      const Index at = r * stride + i;
      const packet<A> xhat = mul(sub(sub(load<A>(x + at), mean[r]), lo[r]), rstd[r]);
      const packet<A> d = load<A>(dy + at);
      packet<A> centered = add(d, neg_mean_g[r]);
      if constexpr (HasW) centered = madd(d, wi, neg_mean_g[r]), dw = madd(d, xhat, dw), db = add(db, d);
      store(dx + at, mul(scale[r], madd(xhat, neg_mean_gx[r], centered)), stream);
    }
    if constexpr (HasW) store(dweight + i, dw), store(dbias + i, db);
  }
  for (; i < n; ++i) scalar(i);
}

// dx[i] = scale * (g - mean_g - xhat * mean_gx), g = dy * w[i], for R runs (R = 1 or 4) of n values,
// run r at x + r * stride (dy and dx likewise) with coefficients c[r]. With w (LayerNorm, RMSNorm)
// it also accumulates the runs' parameter gradients: dweight[i] += dy * xhat, dbias[i] += dy.
// next: as for normalize_runs, for x and dy.
template <int R = 1, class A, class T, class P>
void backward_runs_dx(const T* x, const T* dy, const P* w, T* dx, Index n, Index stride, const RunGrad<A>* c,
                      A* dweight, A* dbias, bool stream = false, Index next = 0) {
  if (w) backward_runs_dx_impl<R, true>(x, dy, w, dx, n, stride, c, dweight, dbias, stream, next);
  else backward_runs_dx_impl<R, false>(x, dy, w, dx, n, stride, c, dweight, dbias, stream, next);
}

}  // namespace normkit::core
