// normkit/core/col_kernels.hpp — the same kernels across rows: a panel of `cols` contiguous values
// in each of `rows` rows, element (r, c) at p[r * stride + c], reduced per column.
//
// This is the shape of a ColMajor LayerNorm/RMSNorm (a group is a column of the [features][rows]
// memory) and of a channels-last BatchNorm (a group is a channel column of [N*H*W][C]). Work is
// vectorized across columns, so every load is contiguous; per-column sums live in small caller
// arrays that stay in L1. The formulas are those of row_kernels.hpp with the per-group
// coefficients now per column (arrays) and the per-element weight/bias now per row.
#pragma once

#include "moments.hpp"
#include "simd.hpp"

namespace normkit::core {

// s1[c] += sum_r (x - shift[c]), s2[c] += sum_r (x - shift[c])^2.
template <class A, class T>
void cols_sums(const T* x, Index rows, Index cols, Index stride, const A* shift, A* s1, A* s2) {
  using namespace simd;
  constexpr Index W = width<A>;
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * stride;
    Index c = 0;
    for (; c + W <= cols; c += W) {
      const packet<A> d = sub(load<A>(xr + c), load<A>(shift + c));
      store(s1 + c, add(load<A>(s1 + c), d));
      store(s2 + c, madd(d, d, load<A>(s2 + c)));
    }
    for (; c < cols; ++c) {
      const A d = load_scalar<A>(xr + c) - shift[c];
      s1[c] += d;
      s2[c] = madd(d, d, s2[c]);
    }
  }
}

// Per-column coefficients (arrays of `cols`), as RunNormalize / RunGrad per run.
// The sweeps below take no aligned head for streaming stores (row_kernels.hpp does): a row of a
// panel streams when it starts aligned and is stored normally otherwise, so that its per-row
// reductions (dweight, dbias) never depend on where a scalar head would have ended.
template <class A>
struct ColsNormalize {
  const A *mean, *mean_lo, *scale, *shift;
};
template <class A>
struct ColsGrad {
  const A *mean, *mean_lo, *rstd, *scale, *neg_mean_g, *neg_mean_gx;  // negated: the sweep adds them
};

// y = ((x - mean[c]) - mean_lo[c]) * scale[c] * w[r] + shift[c] + b[r]; w, b may be null (1 and 0).
// stream: non-temporal stores for y (simd.hpp).
template <class A, class T, class P>
void normalize_cols(const T* x, T* y, Index rows, Index cols, Index stride, const ColsNormalize<A>& k,
                    const P* w, const P* b, bool stream = false) {
  using namespace simd;
  constexpr Index W = width<A>;
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * stride;
    T* yr = y + r * stride;
    const A wr = w ? load_scalar<A>(w + r) : A(1), br = b ? load_scalar<A>(b + r) : A(0);
    const packet<A> wp = set1<A>(wr), bp = set1<A>(br);
    Index c = 0;
    for (; c + W <= cols; c += W) {
      packet<A> v = mul(sub(sub(load<A>(xr + c), load<A>(k.mean + c)), load<A>(k.mean_lo + c)), load<A>(k.scale + c));
      store(yr + c, add(madd(v, wp, load<A>(k.shift + c)), bp), stream);
    }
    for (; c < cols; ++c) {
      const A v = ((load_scalar<A>(xr + c) - k.mean[c]) - k.mean_lo[c]) * k.scale[c];
      store_scalar<T>(yr + c, madd(v, wr, k.shift[c]) + br);
    }
  }
}

// sum_g[c] += sum_r g, sum_gx[c] += sum_r g * xhat, with g = dy * w[r] (w null: g = dy).
template <class A, class T, class P>
void backward_cols_sums(const T* x, const T* dy, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                        const P* w, A* sum_g, A* sum_gx) {
  using namespace simd;
  constexpr Index W = width<A>;
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * stride;
    const T* dyr = dy + r * stride;
    const A wr = w ? load_scalar<A>(w + r) : A(1);
    const packet<A> wp = set1<A>(wr);
    Index c = 0;
    for (; c + W <= cols; c += W) {
      const packet<A> xhat = mul(sub(sub(load<A>(xr + c), load<A>(k.mean + c)), load<A>(k.mean_lo + c)), load<A>(k.rstd + c));
      const packet<A> g = mul(load<A>(dyr + c), wp);
      store(sum_g + c, add(load<A>(sum_g + c), g));
      store(sum_gx + c, madd(g, xhat, load<A>(sum_gx + c)));
    }
    for (; c < cols; ++c) {
      const A xhat = ((load_scalar<A>(xr + c) - k.mean[c]) - k.mean_lo[c]) * k.rstd[c];
      const A g = load_scalar<A>(dyr + c) * wr;
      sum_g[c] += g;
      sum_gx[c] = madd(g, xhat, sum_gx[c]);
    }
  }
}

// dx = scale[c] * (g - mean_g[c] - xhat * mean_gx[c]), g = dy * w[r]. With w it also accumulates the
// per-row parameter gradients over this panel: dweight[r] += sum_c dy * xhat, dbias[r] += sum_c dy.
template <class A, class T, class P>
void backward_cols_dx(const T* x, const T* dy, T* dx, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                      const P* w, A* dweight, A* dbias, bool stream = false) {
  using namespace simd;
  constexpr Index W = width<A>;
  for (Index r = 0; r < rows; ++r) {
    const T* xr = x + r * stride;
    const T* dyr = dy + r * stride;
    T* dxr = dx + r * stride;
    const A wr = w ? load_scalar<A>(w + r) : A(1);
    const packet<A> wp = set1<A>(wr);
    packet<A> dw = set1<A>(A(0)), db = dw;
    A dw_row = 0, db_row = 0;
    Index c = 0;
    for (; c + W <= cols; c += W) {
      const packet<A> xhat = mul(sub(sub(load<A>(xr + c), load<A>(k.mean + c)), load<A>(k.mean_lo + c)), load<A>(k.rstd + c));
      const packet<A> d = load<A>(dyr + c);
      const packet<A> centered = madd(d, wp, load<A>(k.neg_mean_g + c));  // g - mean_g
      dw = madd(d, xhat, dw);
      db = add(db, d);
      store(dxr + c, mul(load<A>(k.scale + c), madd(xhat, load<A>(k.neg_mean_gx + c), centered)), stream);
    }
    for (; c < cols; ++c) {
      const A xhat = ((load_scalar<A>(xr + c) - k.mean[c]) - k.mean_lo[c]) * k.rstd[c];
      const A d = load_scalar<A>(dyr + c);
      dw_row = madd(d, xhat, dw_row);
      db_row += d;
      store_scalar<T>(dxr + c, k.scale[c] * madd(xhat, k.neg_mean_gx[c], madd(d, wr, k.neg_mean_g[c])));
    }
    if (w) {
      dweight[r] += dw_row + sum(dw);
      dbias[r] += db_row + sum(db);
    }
  }
}

}  // namespace normkit::core
