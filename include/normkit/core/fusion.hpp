// normkit/core/fusion.hpp — what the kernels read and how they write: the fusion points.
//
// A kernel reads its input through a load prologue and writes its output through a store epilogue,
// both chosen at compile time, so that a fused layer adds arithmetic on the way in or out without a
// kernel or a driver of its own:
//   LoadX         x[i]                                         (every layer)
//   LoadResidual  h[i] = x[i] + alpha * r[i], rounded once to T (residual add + norm), stored by
//                 load_kept(): by the final sweep, or by a pass of its own (keep_run) after which the
//                 statistics and the sweep read h as plain x (NormForward's runs: in h itself, or
//                 while streaming, in a scratch row). Either way each element of x and r is read
//                 before h is written there: h may share storage with x or with r.
//   LoadCopy      x[i], also stored unchanged to h[i] by load_kept() (a kept sum, from the scratch
//                 row to h, streamed with y).
//   LoadAhead     what another prologue loads, prefetching the runs a fixed distance on.
//   StoreY        y[i] = v
//   StoreAdd      y[i] = v + e[i], added in A and rounded once (backward of a residual branch:
//                 dx = dx_norm + dh); v is rounded to A first, never fused with the add, so that
//                 for T = A the result is the two-step y = v; y += e. y may share storage with e.
// Offsets are in elements from the run's (or panel's) start; at(k) moves the origin by k. The
// kernels take these objects by value, so each is at most two words (see LoadResidual). `arrays`:
// how many arrays of the tensor's shape each one reads or writes (a kept h not counted), for the
// column kernels' row blocks (col_kernels.hpp: strip_block_rows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "simd.hpp"
#include "tuning.hpp"

namespace normkit::core {

using Eigen::Index;

// Overloads taking a prologue or epilogue stand beside ones taking plain pointers: this keeps a
// pointer (const or not) from matching the former.
template <class F>
using if_fusion = std::enable_if_t<std::is_class_v<F>, int>;

template <class T>
struct LoadX {
  using value_type = T;
  static constexpr Index arrays = 1;
  const T* x;
  template <class V>
  EIGEN_ALWAYS_INLINE V load(Index i) const {
    return simd::loadv<V>(x + i);
  }
  template <class V>
  EIGEN_ALWAYS_INLINE V load_kept(Index i, bool) const {
    return load<V>(i);
  }
  template <class V>
  EIGEN_ALWAYS_INLINE void keep_value(Index, T*) const {}
  EIGEN_ALWAYS_INLINE void prefetch(Index i) const { simd::prefetch_l2(x + i); }
  LoadX at(Index k) const { return {x + k}; }
  LoadX held() const { return *this; }
  const T* base() const { return x; }
  bool keeps() const { return false; }
  T* kept(Index) const { return nullptr; }
};

// The arrays of a residual sum, held by the caller for the whole call.
template <class A, class T>
struct ResidualSum {
  const T* x;
  const T* r;
  A alpha;
  T* h;  // null: the sum is not stored
};
// LoadResidual points to them, at an offset: two words, passed in registers. Holding the four
// fields itself it was 32 bytes, which the ABI passes through memory at every kernel call, built
// field by field by at() just before: the callee's wide copy of it then waited on a failed
// store-to-load forward, per run and per kernel (most of the per-row cost of the residual forward
// on short rows). Inside a kernel that stores while it loads (the sweeps, keep_run), the fields
// are copied once into the kernel's own LoadResidual (held(): Sum = the ResidualSum itself, whose
// address never escapes, so its fields stay in registers). Through the pointer every packet
// reloaded them after its stores (intrinsic stores may alias anything), and a reload whose low 12
// address bits matched a store still in flight waited on it (4K aliasing): without the reloads
// RMSNorm<bfloat16>::forward_add 2048x4096 (AVX2 build) took 0.77 of the time (docs/benchmarks.md).
template <class A, class T, class Sum = const ResidualSum<A, T>*>
struct LoadResidual {
  using value_type = T;
  static constexpr Index arrays = 2;  // x and r
  Sum sum;
  Index offset = 0;
  EIGEN_ALWAYS_INLINE const ResidualSum<A, T>& fields() const {
    if constexpr (std::is_pointer_v<Sum>) return *sum;
    else return sum;
  }
  LoadResidual<A, T, ResidualSum<A, T>> held() const { return {fields(), offset}; }
  template <class V>
  EIGEN_ALWAYS_INLINE V load(Index i) const {
    return simd::round_to<T>(sum_in_A<V>(i));
  }
  // load(i), also stored as h (by the sweep that keeps h): the sum rounded to T once.
  template <class V>
  EIGEN_ALWAYS_INLINE V load_kept(Index i, bool stream) const {
    if (!fields().h) return load<V>(i);
    return simd::store_rounded(fields().h + offset + i, sum_in_A<V>(i), stream);
  }
  // The sum rounded once and stored at to[i] (h, or a scratch row), for a pass of its own (keep_run).
  template <class V>
  EIGEN_ALWAYS_INLINE void keep_value(Index i, T* to) const {
    simd::storev(to + i, sum_in_A<V>(i));
  }
  template <class V>
  EIGEN_ALWAYS_INLINE V sum_in_A(Index i) const {
    const Index at = offset + i;
    const ResidualSum<A, T>& s = fields();
    return simd::madd(simd::loadv<V>(s.r + at), simd::splat<V>(s.alpha), simd::loadv<V>(s.x + at));
  }
  EIGEN_ALWAYS_INLINE void prefetch(Index i) const {
    simd::prefetch_l2(fields().x + offset + i), simd::prefetch_l2(fields().r + offset + i);
  }
  LoadResidual at(Index k) const { return {sum, offset + k}; }
  // Whether load_kept() stores, and where (so that later passes can read the sum back as plain x).
  bool keeps() const { return fields().h != nullptr; }
  T* kept(Index k) const { return fields().h + offset + k; }
};

// A sum kept in a scratch row (x), read back by the sweep, which also stores it unchanged to h:
// neither formed nor rounded a second time. prefetch asks the prologue the sum came from (fetch)
// for the runs that follow.
template <class T, class Fetch>
struct LoadCopy {
  using value_type = T;
  static constexpr Index arrays = 2;  // x and r, read by fetch's pass (a kept h not counted)
  const T* x;
  T* h;
  Fetch fetch;
  template <class V>
  EIGEN_ALWAYS_INLINE V load(Index i) const {
    return simd::loadv<V>(x + i);
  }
  template <class V>
  EIGEN_ALWAYS_INLINE V load_kept(Index i, bool stream) const {
    return simd::load_copied<V>(x + i, h + i, stream);
  }
  EIGEN_ALWAYS_INLINE void prefetch(Index i) const { fetch.prefetch(i); }
  LoadCopy at(Index k) const { return {x + k, h + k, fetch.at(k)}; }
  LoadCopy<T, decltype(fetch.held())> held() const { return {x, h, fetch.held()}; }
  const T* base() const { return x; }
};

// A load prologue's values, each packet's load also prefetching the same offset `ahead` further
// on into L2 (the runs a pass that only reads precedes: NormForward's statistics).
template <class Load>
struct LoadAhead {
  using value_type = typename Load::value_type;
  static constexpr Index arrays = Load::arrays;
  Load x;
  Index ahead;
  template <class V>
  EIGEN_ALWAYS_INLINE V load(Index i) const {
    if constexpr (!simd::is_scalar<V>) x.prefetch(ahead + i);
    return x.template load<V>(i);
  }
  LoadAhead at(Index k) const { return {x.at(k), ahead}; }
};

template <class T>
struct StoreY {
  static constexpr Index arrays = 1;
  T* y;
  template <class V>
  EIGEN_ALWAYS_INLINE void store(Index i, const V& v, bool stream) const {
    simd::storev(y + i, v, stream);
  }
  EIGEN_ALWAYS_INLINE void prefetch(Index) const {}
  const T* base() const { return y; }
  StoreY at(Index k) const { return {y + k}; }
};

template <class T>
struct StoreAdd {
  static constexpr Index arrays = 2;  // y written, e read
  T* y;
  const T* e;
  template <class V>
  EIGEN_ALWAYS_INLINE void store(Index i, const V& v, bool stream) const {
    simd::storev(y + i, simd::add(simd::rounded(v), simd::loadv<V>(e + i)), stream);
  }
  // The sweeps that prefetch their next runs' inputs into L2 prefetch e with them: read by the
  // sweep alone, it otherwise comes from memory on demand.
  EIGEN_ALWAYS_INLINE void prefetch(Index i) const { simd::prefetch_l2(e + i); }
  const T* base() const { return y; }
  StoreAdd at(Index k) const { return {y + k, e + k}; }
};

// A constant held both as a packet and as a scalar, for formulas written once over V (simd.hpp):
// the packet is broadcast once, outside the loops.
template <class A>
struct Splat {
  A s;
  simd::packet<A> p;
  explicit Splat(A v = A(0)) : s(v), p(simd::set1<A>(v)) {}
};
template <class V, class A>
EIGEN_ALWAYS_INLINE const V& as(const Splat<A>& c) {
  if constexpr (simd::is_scalar<V>) return c.s;
  else return c.p;
}

// The lambda that carries a kernel's formula (for_lanes, for_strips) is marked NORMKIT_LANE and
// both are always inlined: g++ 12 otherwise inlines them after its alias analysis has seen the
// closure escape, and then keeps the kernel's broadcast constants in memory, reloading them for
// every packet (three loads per value in LayerNorm's forward sweep: +12% at 64x768), or reloads
// the output pointer after every packet store (intrinsic stores may alias anything).
#if defined(__GNUC__)
#define NORMKIT_LANE __attribute__((always_inline))
#else
#define NORMKIT_LANE
#endif

// In the row and column kernels, loops over a batch's runs, a strip's packets or a set of
// accumulators (a count fixed at compile time, 16 at most) are unrolled whole, so that the arrays
// they index (broadcast coefficients, partial sums) become registers. Left to its size estimates,
// g++ 12 unrolled them or not depending on unrelated code in the same translation unit: one
// non-template function added to softmax_kernels.hpp (sum_ones_apart) sent the four-row
// LayerNorm/RMSNorm forward sweep's 16 broadcast coefficients to the stack, reloaded for every
// packet (the measurement is in docs/benchmarks.md). clang reads the same pragma.
#if defined(__GNUC__)
#define NORMKIT_UNROLL _Pragma("GCC unroll 16")
#else
#define NORMKIT_UNROLL
#endif

// The values [head, end) of a sweep's output run of n values at p that non-temporal stores write
// (simd.hpp: store): whole cache lines only, head the first value on a line boundary. The values
// before head and from end on are stored through the cache, and so are the rows of a batch whose
// lines do not fall where the first row's do (store checks each packet's alignment; a kept h
// streams where y does). A line written partly by streaming stores and partly by ordinary ones
// (two neighbouring rows meeting inside it) leaves its write-combining buffer partly filled, which
// the vendors' guides warn is flushed as partial writes: with packets narrower than a line
// (bfloat16 on AVX-512, floats on AVX2) a bfloat16 softmax 4096x1024 whose y sat 16 bytes off a
// 32-byte boundary took 3.1 ms against 2.2 with whole lines (docs/benchmarks.md).
// Not streaming (stream false, or p not a whole number of values off a line): {0, 0}.
struct StreamSpan {
  Index head = 0, end = 0;
};
template <class A, class T>
StreamSpan stream_span(const T* p, Index n, bool stream) {
  constexpr std::uintptr_t line = std::max<std::uintptr_t>(std::uintptr_t(tuning::kCacheLineBytes),
                                                           sizeof(T) * simd::width<A>);
  const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(p) % line;
  if (!stream || misalign % sizeof(T) != 0) return {};
  constexpr Index per_line = Index(line / sizeof(T));
  const Index head = std::min<Index>(n, misalign ? Index((line - misalign) / sizeof(T)) : 0);
  return {head, head + (n - head) / per_line * per_line};
}

// Output rows a sweep stores while it loads a parameter array at the same rate (one parameter
// value per output value): rows of row_bytes each, the first at base.
struct OutputRows {
  const void* base;
  Index row_bytes;
};
namespace detail {
// The period of out's row starts within a page: gcd(row_bytes, page).
inline std::uintptr_t row_start_period(const OutputRows& out) {
  std::uintptr_t a = static_cast<std::uintptr_t>(out.row_bytes) % tuning::kAliasBytes, b = tuning::kAliasBytes;
  while (a) b %= a, std::swap(a, b);  // gcd(row_bytes, page): every row starts at base plus a multiple
  return b;
}
// Whether parameters at page offset `offset` lie at least kAliasAheadBytes past the nearest row
// start of out at or below them, and at least kAliasTrailBytes before the next.
inline bool untrailed(std::uintptr_t offset, const OutputRows& out) {
  const std::uintptr_t period = row_start_period(out);
  const std::uintptr_t past = (offset - reinterpret_cast<std::uintptr_t>(out.base)) % period;
  return past >= tuning::kAliasAheadBytes && period - past >= tuning::kAliasTrailBytes;
}
}  // namespace detail
// Whether a parameter array at p, loaded at the outputs' rate, is placed where its loads would
// wait on the outputs' stores (tuning.hpp: kAliasTrailBytes).
inline bool trails_outputs(const void* p, std::initializer_list<OutputRows> outs) {
  const std::uintptr_t offset = reinterpret_cast<std::uintptr_t>(p) % tuning::kAliasBytes;
  for (const OutputRows& out : outs)
    if (out.base && !detail::untrailed(offset, out)) return true;
  return false;
}
// A page offset for a copy of the parameters where no output row's stores hold up their loads: the
// first output's offset plus kAliasAheadBytes, or further in steps of 16 bytes; -1 where there is
// none (rows starting every few hundred bytes, or no output).
inline std::intptr_t untrailed_offset(std::initializer_list<OutputRows> outs) {
  const auto first = std::find_if(outs.begin(), outs.end(), [](const OutputRows& out) { return out.base; });
  if (first == outs.end()) return -1;
  const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(first->base) + tuning::kAliasAheadBytes;
  for (std::uintptr_t step = 0; step < tuning::kAliasBytes; step += 16) {
    const std::uintptr_t offset = (start + step) % tuning::kAliasBytes;
    if (std::all_of(outs.begin(), outs.end(),
                    [&](const OutputRows& out) { return !out.base || detail::untrailed(offset, out); }))
      return static_cast<std::intptr_t>(offset);
  }
  return -1;
}

// A row of n values of E for the calling thread, kept for its next calls, starting at the offset of
// `like` within a page (tuning::kAliasBytes): what one pass writes there and a later pass of the same
// run, on the same thread, reads back (softmax's exponentials, a residual sum kept while streaming).
// Placed by the heap it made softmax fp32 4096x1024 run 3.3-3.9 ms instead of 2.2-2.4 in some
// processes: x at 0x160 within a page, y at 0x170, the scratch at 0x140. Moved against x (x's offset
// plus 0 to 4032 in steps of 128 bytes) it read 2.1-2.5 everywhere but 128 bytes below x, 2.84: what
// 4K aliasing would do (a load whose address matches a pending store's in the low 12 bits waits on
// it), the sweep's loads of the scratch running into y's streaming stores just above it. At x's own
// offset (y's, in most layouts) neither pass's loads meet a pending store of the other array;
// bfloat16, whose x and y advance half as fast as the scratch, measured best there too (2.6 ms; 3.3
// half a page away).
template <class E>
E* scratch_row(Index n, const void* like) {
  constexpr std::uintptr_t page = tuning::kAliasBytes;
  thread_local std::vector<E, Eigen::aligned_allocator<E>> row;
  const std::size_t size = static_cast<std::size_t>(n) + 2 * page / sizeof(E);  // room to place it
  if (row.size() < size) row.resize(size);
  const std::uintptr_t start = (reinterpret_cast<std::uintptr_t>(row.data()) + page - 1) & ~(page - 1);
  return reinterpret_cast<E*>(start + (reinterpret_cast<std::uintptr_t>(like) & (page - 1) & ~(sizeof(E) - 1)));
}

// Calls f(i, V{}, streamed) over a sweep's output run of n values with its StreamSpan: scalars
// before span.head and for the tail, packets of A between; streamed is a std::bool_constant, true
// for the packets of [span.head, span.end) (whole lines: non-temporal stores), false elsewhere. Which stores stream is
// then a loop's choice, not a test per packet: with `i < span.end` tested in the body, g++ -O3 split the sweeps' loops
// at it (with two 64-bit divisions, idiv, in each call's set-up), and the AVX2 build's LayerNorm/RMSNorm forward
// 4096x768 took 1.2-1.4x as long as with one flag for the whole run (docs/benchmarks.md, "Which stores stream: a loop's
// choice").
template <class A, class F>
EIGEN_ALWAYS_INLINE void for_stream_lanes(Index n, const StreamSpan& span, F&& f) {
  constexpr Index W = simd::width<A>;
  // The body's end computed once: with `i + W <= n` and a constant n, g++ 12 warns (inlined) that
  // the tail's index could overflow. span.end <= body_end: the span is whole packets.
  const Index body_end = span.head + (n - span.head) / W * W;
  for (Index i = 0; i < span.head; ++i) f(i, A{}, std::false_type{});
  Index i = span.head;
  for (; i < span.end; i += W) f(i, simd::packet<A>{}, std::true_type{});
  for (; i < body_end; i += W) f(i, simd::packet<A>{}, std::false_type{});
  for (; i < n; ++i) f(i, A{}, std::false_type{});
}

// Calls f(i, V{}) over [0, n): packets of A for the body, scalars for the tail. f writes its
// formula once, over V. for_stream_lanes' loops, with nothing streamed.
template <class A, class F>
EIGEN_ALWAYS_INLINE void for_lanes(Index n, F&& f) {
  for_stream_lanes<A>(n, StreamSpan{}, [&](Index i, auto lane, auto) NORMKIT_LANE { f(i, lane); });
}

}  // namespace normkit::core
