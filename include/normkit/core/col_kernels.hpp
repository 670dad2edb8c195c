// normkit/core/col_kernels.hpp — the same kernels across rows: a panel of `cols` contiguous values
// in each of `rows` rows, element (r, c) at r * stride + c, reduced per column.
//
// This is the shape of a ColMajor LayerNorm/RMSNorm (a group is a column of the [features][rows]
// memory) and of a channels-last BatchNorm (a group is a channel column of [N*H*W][C]). Work is
// vectorized across columns, so every load is contiguous; per-column sums live in small caller
// arrays that stay in L1. The formulas are those of row_kernels.hpp with the per-group
// coefficients now per column (arrays) and the per-element weight/bias now per row.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "fusion.hpp"
#include "moments.hpp"
#include "row_kernels.hpp"
#include "simd.hpp"
#include "tuning.hpp"

namespace normkit::core {

// Each kernel walks a strip of S packets of columns down a block of rows, holding the strip's
// coefficients and sums in registers, then the next strip down the same block: row by row across
// the whole panel instead, every packet of x cost 4 loads and 2 stores of per-column state, and the
// in-cache shapes were bound by them. A column's values are still taken in row order, so the
// results are those of the row-by-row form.
template <class A>
inline constexpr Index kStrip = tuning::kStripPackets;
// ... and the kernels with per-row parameters (ColMajor LayerNorm/RMSNorm), strips of this many
// (tuning.hpp: kRowParamStripPackets).
template <class A>
inline constexpr Index kRowParamStrip = tuning::kRowParamStripPackets;
// The bytes of each row a strip of S packets of T covers. Where one strip covers a whole row of the panel
// (stride * sizeof(T) <= kStripBytes), its walk reads memory in order. That test is written out
// where it is used: as a function, even a constexpr one, it changed g++ 12's inlining of the kernels
// below (the AVX-512 normalize_cols_impl lost half of its unrolled strip bodies).
template <class A, class T, Index S = kStrip<A>>
inline constexpr Index kStripBytes = (S * simd::width<A> * Index(sizeof(T)));  // (): for clang-format

// Rows per block of a strip walk (tuning.hpp: kStripBlockBytes), for a kernel that reads or writes
// `arrays` arrays of the panel's shape. Blocks serve two panels: contiguous rows whose strips read
// a line or less of each row, and rows kL1AliasBytes or more apart. Other panels take all their
// rows in one block (one walk per strip), where short blocks measured slower.
template <class A, class T, Index S = kStrip<A>>
Index strip_block_rows(Index rows, Index cols, Index stride, Index arrays) {
  const bool thin_strips = stride == cols && kStripBytes<A, T, S> <= tuning::kCacheLineBytes;
  const bool aliased = stride * Index(sizeof(T)) >= tuning::kL1AliasBytes;
  if (!thin_strips && !aliased) return std::max<Index>(rows, 1);
  return std::max<Index>(tuning::kStripBlockMinRows,
                         tuning::kStripBlockBytes / (std::max<Index>(cols, 1) * arrays * Index(sizeof(T))));
}

// for_strips, below, for one value of fetching.
template <class A, Index S, class Fetching, class Strip>
EIGEN_ALWAYS_INLINE void for_strips_walk(Index rows, Index cols, Index block, Fetching fetching, Strip& strip) {
  constexpr Index W = simd::width<A>;
  // Each loop's end computed once (as in for_lanes: g++ 12 misjudges `c + W <= cols` with a constant
  // cols once this is inlined).
  const Index strips_end = cols / (S * W) * (S * W), packets_end = cols / W * W;
  if (cols <= S * W) block = std::max<Index>(rows, 1);
  for (Index r0 = 0; r0 < rows; r0 += block) {
    const Index r1 = std::min(rows, r0 + block);
    for (Index c = 0; c < strips_end; c += S * W)
      strip(c, r0, r1, std::integral_constant<Index, S>{}, simd::packet<A>{}, fetching);
    for (Index c = strips_end; c < packets_end; c += W)
      strip(c, r0, r1, std::integral_constant<Index, 1>{}, simd::packet<A>{}, fetching);
    for (Index c = packets_end; c < cols; ++c) strip(c, r0, r1, std::integral_constant<Index, 1>{}, A{}, fetching);
  }
}

// Calls strip(c, r0, r1, S, V{}, fetching) for rows [r0, r1) of blocks of `block` rows and, in each
// block, strips of S lanes of V starting at column c: S packets (kStrip unless given), then single packets, then
// (V = A) single columns. A kernel writes its body once, over S and V. Every column still meets its
// rows in order, so a kernel that keeps its per-column state in memory between blocks gives the
// bits of one walk down all the rows. A panel of one strip is one block: its walk is in memory order.
// fetching, a std::bool_constant: whether the walk prefetches (StripPrefetch, below). The body is
// compiled apart for each value, so that a walk without prefetches is the kernel alone: with a
// test in every row instead, the AVX2 normalize_cols_impl spilled twice as often, and in-cache
// shapes that never prefetch ran slower (docs/benchmarks.md).
template <class A, Index S = kStrip<A>, class Strip>
EIGEN_ALWAYS_INLINE void for_strips(Index rows, Index cols, Index block, bool fetching, Strip&& strip) {
  if (fetching) for_strips_walk<A, S>(rows, cols, block, std::true_type{}, strip);
  else for_strips_walk<A, S>(rows, cols, block, std::false_type{}, strip);
}

template <class V>
inline constexpr Index lanes = Eigen::internal::unpacket_traits<V>::size;

// A strip's walk prefetches its own lines into L2 some rows ahead (tuning.hpp: kStripPrefetchBytes),
// unless a strip spans the row and the walk reads memory in order. Every kernel below takes
// fetch_rows: the rows of its arrays, from its first, that it may prefetch (the rest of the
// caller's walk; 0: none), and row r prefetches row r + ahead while that is one of them.
template <class A, class T, Index Packets = kStrip<A>>
struct StripPrefetch {
  Index step = 0, end = 0;  // elements ahead; rows below `end` prefetch
  StripPrefetch(Index stride, Index fetch_rows) {
    if (stride * Index(sizeof(T)) <= kStripBytes<A, T, Packets>) return;
    const Index ahead = tuning::kStripPrefetchBytes / kStripBytes<A, T, Packets>;
    step = ahead * stride, end = fetch_rows - ahead;
  }
  bool any() const { return end > 0; }
  // Row r's strip of S lanes of V at element `at` of each array (loads of fusion.hpp), in a walk
  // that prefetches (for_strips: fetching).
  template <class V, Index S, class Fetching, class... Loads>
  EIGEN_ALWAYS_INLINE void row(Index r, Index at, Fetching, const Loads&... arrays) const {
    if (!Fetching::value || r >= end) return;
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) (arrays.prefetch(at + step + j * lanes<V>), ...);
  }
};

// Whether a sweep asked to stream its stores (simd.hpp) does: only where each strip writes whole
// lines of a row, or the walk is in memory order. A strip narrower than a line (16-bit data in
// 16-byte AVX2 packets, two per strip: 32 bytes) leaves every row's line half written in a
// write-combining buffer, whose partial flushes cost more than stores through the cache (most of
// a bfloat16 channels-last GroupNorm's time in the AVX2 build went to one streaming store).
template <class A, class T, Index S = kStrip<A>>
bool strips_stream(bool stream, Index stride) {
  return stream &&
         (kStripBytes<A, T, S> >= tuning::kCacheLineBytes || stride * Index(sizeof(T)) <= kStripBytes<A, T, S>);
}

// s1[c] += sum_r (x - shift[c]), s2[c] += sum_r (x - shift[c])^2.
template <class A, class Load, if_fusion<Load> = 0>
void cols_sums(Load x, Index rows, Index cols, Index stride, const A* shift, A* s1, A* s2, Index fetch_rows = 0) {
  using namespace simd;
  const StripPrefetch<A, typename Load::value_type> fetch(stride, fetch_rows);
  for_strips<A>(rows, cols, strip_block_rows<A, typename Load::value_type>(rows, cols, stride, Load::arrays),
                fetch.any(),
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto fetching) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;  // the arrays' bound: GCC's -Wsign-conversion flags a signed one
    V sh[N], a1[N], a2[N];
    NORMKIT_UNROLL
    for (Index k = 0; k < S; ++k)
      sh[k] = loadv<V>(shift + c + k * L), a1[k] = loadv<V>(s1 + c + k * L), a2[k] = loadv<V>(s2 + c + k * L);
    for (Index r = r0; r < r1; ++r) {
      fetch.template row<V, S>(r, r * stride + c, fetching, x);
      NORMKIT_UNROLL
      for (Index k = 0; k < S; ++k) {
        const V d = sub(x.template load<V>(r * stride + c + k * L), sh[k]);
        a1[k] = add(a1[k], d);
        a2[k] = madd(d, d, a2[k]);
      }
    }
    NORMKIT_UNROLL
    for (Index k = 0; k < S; ++k) storev(s1 + c + k * L, a1[k]), storev(s2 + c + k * L, a2[k]);
  });
}
template <class A, class T>
void cols_sums(const T* x, Index rows, Index cols, Index stride, const A* shift, A* s1, A* s2, Index fetch_rows = 0) {
  cols_sums(LoadX<T>{x}, rows, cols, stride, shift, s1, s2, fetch_rows);
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
  const A* weight = nullptr;  // per column, multiplying dy (GroupNorm: channels of a group); null: 1
};

// y = ((x - mean[c]) - mean_lo[c]) * scale[c] * w[r] + shift[c] + b[r]; w, b may be null (1 and 0).
// stream: non-temporal stores for y (simd.hpp).
// RowAffine: w or b is set (ColMajor LayerNorm/RMSNorm). Without (every channels-last layer, whose
// affine is folded into scale and shift) the sweep is one FMA after the two subtractions, not five
// operations with a multiply by 1 and an add of 0: columns in cache are bound by the operations
// per packet, all the more where a 256-bit operation issues as two halves (Zen 1).
template <bool RowAffine, class A, class Load, class Store, class P>
void normalize_cols_impl(Load load, Store y, Index rows, Index cols, Index stride, const ColsNormalize<A>& k,
                         const P* w, const P* b, bool stream, Index fetch_rows) {
  using namespace simd;
  using T = typename Load::value_type;
  constexpr Index Strip = RowAffine ? kRowParamStrip<A> : kStrip<A>;
  const auto x = load.held();  // a kernel that stores holds the prologue's fields (fusion.hpp)
  const Index arrays = Load::arrays + Store::arrays + (x.keeps() ? 1 : 0);
  const StripPrefetch<A, T, Strip> fetch(stride, fetch_rows);
  stream = strips_stream<A, T, Strip>(stream, stride);
  for_strips<A, Strip>(rows, cols, strip_block_rows<A, T, Strip>(rows, cols, stride, arrays), fetch.any(),
                       [&](Index c, Index r0, Index r1, auto strip, auto lane, auto fetching) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    V mean[N], mean_lo[N], scale[N], shift[N];
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * L;
      mean[j] = loadv<V>(k.mean + at), mean_lo[j] = loadv<V>(k.mean_lo + at);
      scale[j] = loadv<V>(k.scale + at), shift[j] = loadv<V>(k.shift + at);
    }
    for (Index r = r0; r < r1; ++r) {
      V wr{}, br{};
      if constexpr (RowAffine)
        wr = splat<V>(w ? load_scalar<A>(w + r) : A(1)), br = splat<V>(b ? load_scalar<A>(b + r) : A(0));
      fetch.template row<V, S>(r, r * stride + c, fetching, x);
      NORMKIT_UNROLL
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        const V xv = x.template load_kept<V>(at, stream);
        const V d = sub(sub(xv, mean[j]), mean_lo[j]);
        if constexpr (RowAffine) y.store(at, add(madd(mul(d, scale[j]), wr, shift[j]), br), stream);
        else y.store(at, madd(d, scale[j], shift[j]), stream);
      }
    }
  });
}
template <class A, class Load, class Store, class P, if_fusion<Load> = 0>
void normalize_cols(Load x, Store y, Index rows, Index cols, Index stride, const ColsNormalize<A>& k, const P* w,
                    const P* b, bool stream = false, Index fetch_rows = 0) {
  if (w || b) normalize_cols_impl<true>(x, y, rows, cols, stride, k, w, b, stream, fetch_rows);
  else normalize_cols_impl<false>(x, y, rows, cols, stride, k, w, b, stream, fetch_rows);
}
template <class A, class T, class P>
void normalize_cols(const T* x, T* y, Index rows, Index cols, Index stride, const ColsNormalize<A>& k, const P* w,
                    const P* b, bool stream = false, Index fetch_rows = 0) {
  normalize_cols(LoadX<T>{x}, StoreY<T>{y}, rows, cols, stride, k, w, b, stream, fetch_rows);
}

// sum_g[c] += sum_r g, sum_gt[c] += sum_r g * t, with g = dy * w[r] (w null: g = dy) and
// t = (x - mean) - mean_lo: sum(g * xhat) is sum_gt * rstd, one multiply per column for the caller
// instead of one per value here. RowWeights: w is set (ColMajor LayerNorm/RMSNorm); without, g is
// dy itself, not dy times 1.
template <bool RowWeights, class A, class T, class P>
void backward_cols_sums_impl(const T* x, const T* dy, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                             const P* w, A* sum_g, A* sum_gt, Index fetch_rows) {
  using namespace simd;
  constexpr Index Strip = RowWeights ? kRowParamStrip<A> : kStrip<A>;
  const StripPrefetch<A, T, Strip> fetch(stride, fetch_rows);
  for_strips<A, Strip>(rows, cols, strip_block_rows<A, T, Strip>(rows, cols, stride, 2), fetch.any(),
                       [&](Index c, Index r0, Index r1, auto strip, auto lane, auto fetching) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    V mean[N], mean_lo[N], sg[N], sgt[N];
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * L;
      mean[j] = loadv<V>(k.mean + at), mean_lo[j] = loadv<V>(k.mean_lo + at);
      sg[j] = loadv<V>(sum_g + at), sgt[j] = loadv<V>(sum_gt + at);
    }
    for (Index r = r0; r < r1; ++r) {
      V wr{};
      if constexpr (RowWeights) wr = splat<V>(load_scalar<A>(w + r));
      fetch.template row<V, S>(r, r * stride + c, fetching, LoadX<T>{x}, LoadX<T>{dy});
      NORMKIT_UNROLL
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        const V t = sub(sub(loadv<V>(x + at), mean[j]), mean_lo[j]);
        V g = loadv<V>(dy + at);
        if constexpr (RowWeights) g = mul(g, wr);
        sg[j] = add(sg[j], g);
        sgt[j] = madd(g, t, sgt[j]);
      }
    }
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) storev(sum_g + c + j * L, sg[j]), storev(sum_gt + c + j * L, sgt[j]);
  });
}
template <class A, class T, class P>
void backward_cols_sums(const T* x, const T* dy, Index rows, Index cols, Index stride, const ColsGrad<A>& k, const P* w,
                        A* sum_g, A* sum_gt, Index fetch_rows = 0) {
  if (w) backward_cols_sums_impl<true>(x, dy, rows, cols, stride, k, w, sum_g, sum_gt, fetch_rows);
  else backward_cols_sums_impl<false>(x, dy, rows, cols, stride, k, w, sum_g, sum_gt, fetch_rows);
}

// dx = scale[c] * (g - mean_g[c] - xhat * mean_gx[c]), g = dy * w[r]. With the per-row w of a
// ColMajor LayerNorm/RMSNorm it also accumulates the per-row parameter gradients over this panel:
// dweight[r] += sum_c dy * xhat, dbias[r] += sum_c dy (strip by strip, then the columns left over).
template <class A, class T, class P, class Store>
void backward_cols_dx_rows(const T* x, const T* dy, Store dx, Index rows, Index cols, Index stride,
                           const ColsGrad<A>& k, const P* w, A* dweight, A* dbias, bool stream, Index fetch_rows) {
  using namespace simd;
  constexpr Index Strip = kRowParamStrip<A>;
  const StripPrefetch<A, T, Strip> fetch(stride, fetch_rows);
  stream = strips_stream<A, T, Strip>(stream, stride);
  eigen_assert(!k.weight);  // a per-column weight comes without per-row parameters (channels-last)
  for_strips<A, Strip>(rows, cols, strip_block_rows<A, T, Strip>(rows, cols, stride, 2 + Store::arrays), fetch.any(),
                       [&](Index c, Index r0, Index r1, auto strip, auto lane, auto fetching) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    V mean[N], mean_lo[N], rstd[N], scale[N], neg_mean_g[N], neg_mean_gx[N];
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * L;
      mean[j] = loadv<V>(k.mean + at), mean_lo[j] = loadv<V>(k.mean_lo + at), rstd[j] = loadv<V>(k.rstd + at);
      scale[j] = loadv<V>(k.scale + at), neg_mean_g[j] = loadv<V>(k.neg_mean_g + at);
      neg_mean_gx[j] = loadv<V>(k.neg_mean_gx + at);
    }
    for (Index r = r0; r < r1; ++r) {
      const V wr = splat<V>(load_scalar<A>(w + r));
      V dw = splat<V>(A(0)), db = dw;
      fetch.template row<V, S>(r, r * stride + c, fetching, LoadX<T>{x}, LoadX<T>{dy});
      NORMKIT_UNROLL
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        const V xhat = mul(sub(sub(loadv<V>(x + at), mean[j]), mean_lo[j]), rstd[j]);
        const V d = loadv<V>(dy + at);
        const V centered = madd(d, wr, neg_mean_g[j]);  // g - mean_g
        dw = madd(d, xhat, dw);
        db = add(db, d);
        dx.store(at, mul(scale[j], madd(xhat, neg_mean_gx[j], centered)), stream);
      }
      if (dweight) dweight[r] += sum(dw), dbias[r] += sum(db);
    }
  });
}

// The same dx without per-row parameters (every channels-last layer: BatchNorm, GroupNorm,
// InstanceNorm), g = dy * weight[c] (k.weight; null: 1). Every factor is then per column and folds
// (row_kernels.hpp: fold_grad) into three coefficients, formed in registers once per strip: two
// FMAs after the two subtractions instead of eight operations (columns in cache are bound by the
// operations per packet). x - mean stays apart: folding the mean into the constant term would
// cancel digits on rows far from zero.
template <class A, class T, class Store>
void backward_cols_dx_folded(const T* x, const T* dy, Store dx, Index rows, Index cols, Index stride,
                             const ColsGrad<A>& k, bool stream, Index fetch_rows) {
  using namespace simd;
  const StripPrefetch<A, T> fetch(stride, fetch_rows);
  stream = strips_stream<A, T>(stream, stride);
  for_strips<A>(rows, cols, strip_block_rows<A, T>(rows, cols, stride, 2 + Store::arrays), fetch.any(),
                [&](Index c, Index r0, Index r1, auto strip, auto lane, auto fetching) NORMKIT_LANE {
    using V = decltype(lane);
    constexpr Index S = decltype(strip)::value, L = lanes<V>;
    constexpr std::size_t N = S;  // the arrays' bound (see cols_sums)
    V mean[N], mean_lo[N], per_t[N], per_dy[N], constant[N];
    NORMKIT_UNROLL
    for (Index j = 0; j < S; ++j) {
      const Index at = c + j * L;
      const V weight = k.weight ? loadv<V>(k.weight + at) : splat<V>(A(1));
      const FoldedGrad<V> f = fold_grad(loadv<V>(k.scale + at), loadv<V>(k.rstd + at), loadv<V>(k.neg_mean_g + at),
                                        loadv<V>(k.neg_mean_gx + at), weight);
      mean[j] = loadv<V>(k.mean + at), mean_lo[j] = loadv<V>(k.mean_lo + at);
      per_t[j] = f.per_t, per_dy[j] = f.per_dy, constant[j] = f.constant;
    }
    for (Index r = r0; r < r1; ++r) {
      fetch.template row<V, S>(r, r * stride + c, fetching, LoadX<T>{x}, LoadX<T>{dy});
      NORMKIT_UNROLL
      for (Index j = 0; j < S; ++j) {
        const Index at = r * stride + c + j * L;
        const V t = sub(sub(loadv<V>(x + at), mean[j]), mean_lo[j]);
        dx.store(at, folded_dx(t, loadv<V>(dy + at), per_t[j], per_dy[j], constant[j]), stream);
      }
    }
  });
}

// dweight, dbias: the per-row gradients, with w only (null otherwise).
template <class A, class T, class P, class Store, if_fusion<Store> = 0>
void backward_cols_dx(const T* x, const T* dy, Store dx, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                      const P* w, A* dweight, A* dbias, bool stream = false, Index fetch_rows = 0) {
  if (w) backward_cols_dx_rows(x, dy, dx, rows, cols, stride, k, w, dweight, dbias, stream, fetch_rows);
  else backward_cols_dx_folded(x, dy, dx, rows, cols, stride, k, stream, fetch_rows);
}
template <class A, class T, class P>
void backward_cols_dx(const T* x, const T* dy, T* dx, Index rows, Index cols, Index stride, const ColsGrad<A>& k,
                      const P* w, A* dweight, A* dbias, bool stream = false, Index fetch_rows = 0) {
  backward_cols_dx(x, dy, StoreY<T>{dx}, rows, cols, stride, k, w, dweight, dbias, stream, fetch_rows);
}

}  // namespace normkit::core
