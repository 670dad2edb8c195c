// normkit/core/col_kernels.hpp — the same kernels across rows: a panel of `cols` contiguous values
// in each of `rows` rows, element (r, c) at p[r * stride + c], reduced per column.
//
// This is the shape of a ColMajor LayerNorm/RMSNorm (a group is a column of the [features][rows]
// memory) and of a channels-last BatchNorm (a group is a channel column of [N*H*W][C]). Work is
// vectorized across columns, so every load is contiguous; per-column sums live in small caller
// arrays that stay in L1. The formulas are those of row_kernels.hpp with the per-group
// coefficients now per column (arrays) and the per-element weight/bias now per row.
#pragma once

#include <cstddef>
#include <type_traits>

#include "moments.hpp"
#include "simd.hpp"

namespace normkit::core {

// Each kernel walks a strip of S packets of columns down all the rows, holding the strip's
// coefficients and sums in registers: row by row across the whole panel instead, every packet of x
// cost 4 loads and 2 stores of per-column state, and the in-cache shapes were bound by them. A
// column's values are still taken in row order, so the results are those of the row-by-row form.
// S = 4 with 32 vector registers (AVX-512), 2 with 16; one packet, then scalars, for the rest.
template <class A>
inline constexpr Index kStrip = simd::registers >= 32 ? 4 : 2;

// Calls strip(c, S) for column strips of S packets, S = kStrip then 1, then column(c) for each
// column left over.
template <class A, class Strip, class Column>
EIGEN_STRONG_INLINE void for_strips(Index cols, Strip&& strip, Column&& column) {
  constexpr Index W = simd::width<A>, S = kStrip<A>;
  Index c = 0;
  for (; c + S * W <= cols; c += S * W) strip(c, std::integral_constant<Index, S>{});
  for (; c + W <= cols; c += W) strip(c, std::integral_constant<Index, 1>{});
  for (; c < cols; ++c) column(c);
}

// s1[c] += sum_r (x - shift[c]), s2[c] += sum_r (x - shift[c])^2.
template <class A, class T>
void cols_sums(const T* x, Index rows, Index cols, Index stride, const A* shift, A* s1, A* s2) {
  using namespace simd;
  constexpr Index W = width<A>;
  for_strips<A>(cols, [&](Index c, auto strip) {
    constexpr Index S = decltype(strip)::value;
    constexpr std::size_t N = S;  // the arrays' bound: GCC's -Wsign-conversion flags a signed one
    packet<A> sh[N], a1[N], a2[N];
    for (Index k = 0; k < S; ++k)
      sh[k] = load<A>(shift + c + k * W), a1[k] = load<A>(s1 + c + k * W), a2[k] = load<A>(s2 + c + k * W);
    for (Index r = 0; r < rows; ++r)
      for (Index k = 0; k < S; ++k) {
        const packet<A> d = sub(load<A>(x + r * stride + c + k * W), sh[k]);
        a1[k] = add(a1[k], d);
        a2[k] = madd(d, d, a2[k]);
      }
    for (Index k = 0; k < S; ++k) store(s1 + c + k * W, a1[k]), store(s2 + c + k * W, a2[k]);
  }, [&](Index c) {
    for (Index r = 0; r < rows; ++r) {
      const A d = load_scalar<A>(x + r * stride + c) - shift[c];
      s1[c] += d;
      s2[c] = madd(d, d, s2[c]);
    }
  });
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
  for_strips<A>(cols, [&](Index c, auto strip) {
    constexpr Index S = decltype(strip)::value;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    packet<A> mean[N], mean_lo[N], scale[N], shift[N];
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * W;
      mean[j] = load<A>(k.mean + at), mean_lo[j] = load<A>(k.mean_lo + at);
      scale[j] = load<A>(k.scale + at), shift[j] = load<A>(k.shift + at);
    }
    for (Index r = 0; r < rows; ++r) {
      const packet<A> wp = set1<A>(w ? load_scalar<A>(w + r) : A(1)), bp = set1<A>(b ? load_scalar<A>(b + r) : A(0));
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * W;
        const packet<A> v = mul(sub(sub(load<A>(x + at), mean[j]), mean_lo[j]), scale[j]);
        store(y + at, add(madd(v, wp, shift[j]), bp), stream);
      }
    }
  }, [&](Index c) {
    for (Index r = 0; r < rows; ++r) {
      const A wr = w ? load_scalar<A>(w + r) : A(1), br = b ? load_scalar<A>(b + r) : A(0);
      const A v = ((load_scalar<A>(x + r * stride + c) - k.mean[c]) - k.mean_lo[c]) * k.scale[c];
      store_scalar<T>(y + r * stride + c, madd(v, wr, k.shift[c]) + br);
    }
  });
}

// sum_g[c] += sum_r g, sum_gx[c] += sum_r g * xhat, with g = dy * w[r] (w null: g = dy).
template <class A, class T, class P>
void backward_cols_sums(const T* x, const T* dy, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                        const P* w, A* sum_g, A* sum_gx) {
  using namespace simd;
  constexpr Index W = width<A>;
  for_strips<A>(cols, [&](Index c, auto strip) {
    constexpr Index S = decltype(strip)::value;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    packet<A> mean[N], mean_lo[N], rstd[N], sg[N], sgx[N];
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * W;
      mean[j] = load<A>(k.mean + at), mean_lo[j] = load<A>(k.mean_lo + at), rstd[j] = load<A>(k.rstd + at);
      sg[j] = load<A>(sum_g + at), sgx[j] = load<A>(sum_gx + at);
    }
    for (Index r = 0; r < rows; ++r) {
      const packet<A> wp = set1<A>(w ? load_scalar<A>(w + r) : A(1));
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * W;
        const packet<A> xhat = mul(sub(sub(load<A>(x + at), mean[j]), mean_lo[j]), rstd[j]);
        const packet<A> g = mul(load<A>(dy + at), wp);
        sg[j] = add(sg[j], g);
        sgx[j] = madd(g, xhat, sgx[j]);
      }
    }
    for (Index j = 0; j < S; ++j) store(sum_g + c + j * W, sg[j]), store(sum_gx + c + j * W, sgx[j]);
  }, [&](Index c) {
    for (Index r = 0; r < rows; ++r) {
      const A xhat = ((load_scalar<A>(x + r * stride + c) - k.mean[c]) - k.mean_lo[c]) * k.rstd[c];
      const A g = load_scalar<A>(dy + r * stride + c) * (w ? load_scalar<A>(w + r) : A(1));
      sum_g[c] += g;
      sum_gx[c] = madd(g, xhat, sum_gx[c]);
    }
  });
}

// dx = scale[c] * (g - mean_g[c] - xhat * mean_gx[c]), g = dy * w[r]. With w it also accumulates the
// per-row parameter gradients over this panel: dweight[r] += sum_c dy * xhat, dbias[r] += sum_c dy
// (strip by strip, then the columns left over).
template <class A, class T, class P>
void backward_cols_dx(const T* x, const T* dy, T* dx, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                      const P* w, A* dweight, A* dbias, bool stream = false) {
  using namespace simd;
  constexpr Index W = width<A>;
  for_strips<A>(cols, [&](Index c, auto strip) {
    constexpr Index S = decltype(strip)::value;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    packet<A> mean[N], mean_lo[N], rstd[N], scale[N], neg_mean_g[N], neg_mean_gx[N];
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * W;
      mean[j] = load<A>(k.mean + at), mean_lo[j] = load<A>(k.mean_lo + at), rstd[j] = load<A>(k.rstd + at);
      scale[j] = load<A>(k.scale + at), neg_mean_g[j] = load<A>(k.neg_mean_g + at);
      neg_mean_gx[j] = load<A>(k.neg_mean_gx + at);
    }
    for (Index r = 0; r < rows; ++r) {
      const packet<A> wp = set1<A>(w ? load_scalar<A>(w + r) : A(1));
      packet<A> dw = set1<A>(A(0)), db = dw;
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * W;
        const packet<A> xhat = mul(sub(sub(load<A>(x + at), mean[j]), mean_lo[j]), rstd[j]);
        const packet<A> d = load<A>(dy + at);
        const packet<A> centered = madd(d, wp, neg_mean_g[j]);  // g - mean_g
        dw = madd(d, xhat, dw);
        db = add(db, d);
        store(dx + at, mul(scale[j], madd(xhat, neg_mean_gx[j], centered)), stream);
      }
      if (w) dweight[r] += sum(dw), dbias[r] += sum(db);
    }
  }, [&](Index c) {
    for (Index r = 0; r < rows; ++r) {
      const A wr = w ? load_scalar<A>(w + r) : A(1);
      const A xhat = ((load_scalar<A>(x + r * stride + c) - k.mean[c]) - k.mean_lo[c]) * k.rstd[c];
      const A d = load_scalar<A>(dy + r * stride + c);
      store_scalar<T>(dx + r * stride + c, k.scale[c] * madd(xhat, k.neg_mean_gx[c], madd(d, wr, k.neg_mean_g[c])));
      if (w) dweight[r] = madd(d, xhat, dweight[r]), dbias[r] += d;
    }
  });
}

}  // namespace normkit::core
