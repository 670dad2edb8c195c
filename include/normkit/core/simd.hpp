// normkit/core/simd.hpp — the few packet operations the kernels use, over Eigen's packet math.
//
// Eigen picks the widest packet the compiler was told about (-march=...): 16 floats with AVX-512,
// 8 with AVX, 4 with SSE/NEON. Kernels are written once against these helpers. Loads and stores
// are unaligned: callers' tensors start anywhere. Arithmetic runs in packets of the accumulation
// type A; the storage type T may be narrower (Eigen::bfloat16, Eigen::half with A = float): load
// widens a packet of T to A lanes and store rounds once (to nearest even) back to T, with vector
// conversions where the target has them (AVX2/AVX-512; F16C for half; SSE2 for bfloat16) and
// through a small lane buffer elsewhere.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

namespace normkit::core::simd {

using Eigen::Index;

template <class A>
using packet = typename Eigen::internal::packet_traits<A>::type;

template <class A>
inline constexpr Index width = Eigen::internal::unpacket_traits<packet<A>>::size;

// Vector registers of the target (32 with AVX-512, 16 with AVX, 8 or 16 with SSE).
inline constexpr int registers = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;

// 16-bit float formats <-> packets of float, on targets with the instructions: AVX-512 (16 lanes),
// AVX2 (8 lanes; half also needs F16C) or SSE2 (4 lanes, bfloat16 only). Written on intrinsics
// rather than Eigen's Bf16ToF32 / half2float: those pass an _mm*_undefined operand that GCC 12
// reports as maybe-uninitialized when inlined (bug 105593), which breaks users' -Werror builds; for
// the same reason the AVX-512 code uses the zero-masked (maskz) forms of the intrinsics, whose
// plain forms carry that operand. bfloat16 rounds to nearest even by integer arithmetic on the
// float's bits (NaN stays a quiet NaN); half by the hardware conversion.
namespace bits16 {
#if defined(EIGEN_VECTORIZE_AVX512)
using type = __m256i;  // 16 values
#elif defined(EIGEN_VECTORIZE_AVX2)
using type = __m256i;  // 8 values (see load)
#elif defined(EIGEN_VECTORIZE_SSE2) && !defined(EIGEN_VECTORIZE_AVX)  // 4-float packets
using type = __m128i;  // 4 values, in the low 64 bits
#else
struct type {};
#endif
// Declared on every target so that the kernels compile everywhere; defined, and used, only where
// the flags bf16 / half below say so.
EIGEN_STRONG_INLINE type load(const void* p);
EIGEN_STRONG_INLINE void store(void* p, type v, bool stream);
EIGEN_STRONG_INLINE packet<float> from_bf16(type v);
EIGEN_STRONG_INLINE type to_bf16(packet<float> v);
EIGEN_STRONG_INLINE packet<float> from_half(type v);
EIGEN_STRONG_INLINE type to_half(packet<float> v);
// v rounded to bfloat16 and widened back (from_bf16(to_bf16(v))), with the narrowed values in bits.
// Where the rounding is integer arithmetic on the float's bits (AVX2, SSE2), the widened result is
// those bits with the low half cleared: one AND instead of narrowing and widening again (three or
// four shuffles per packet on AVX2, where the shuffle ports were the residual sweep's bound).
EIGEN_STRONG_INLINE packet<float> round_bf16(packet<float> v, type& bits);

#if defined(EIGEN_VECTORIZE_AVX512)
inline constexpr bool bf16 = true, half = true;
EIGEN_STRONG_INLINE type load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
EIGEN_STRONG_INLINE void store(void* p, type v, bool stream) {
  if (stream) _mm256_stream_si256(static_cast<__m256i*>(p), v);
  else _mm256_storeu_si256(static_cast<__m256i*>(p), v);
}
EIGEN_STRONG_INLINE __m512 from_bf16(type v) {
#if defined(__AVX512BW__)
  // One word permute puts value k into the high word of lane k and the mask zeroes the low words
  // (zero-extend and shift are two shuffle-port operations). It reads words 0-15 only: the cast's
  // upper half, undefined, is never used.
  const __m512i high_words = _mm512_set_epi32(15 << 16, 14 << 16, 13 << 16, 12 << 16, 11 << 16, 10 << 16, 9 << 16,
                                              8 << 16, 7 << 16, 6 << 16, 5 << 16, 4 << 16, 3 << 16, 2 << 16, 1 << 16,
                                              0);
  return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAA, high_words, _mm512_castsi256_si512(v)));
#else
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, v), 16));
#endif
}
EIGEN_STRONG_INLINE type to_bf16(__m512 v) {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  // One instruction (also round to nearest even), but it flushes subnormal inputs to zero: packets
  // holding a float subnormal (|v| < 2^-126, never for ordinary outputs) take the exact path below.
  if (_mm512_fpclass_ps_mask(v, 0x20) == 0) return (__m256i)_mm512_cvtneps_pbh(v);
#endif
  const __m512i b = _mm512_castps_si512(v);
  // To nearest even: + 0x7fff, one more where the kept part is odd (bit 16 set: a mask, not a shift).
  const __m512i up = _mm512_add_epi32(b, _mm512_set1_epi32(0x7fff));
  __m512i r = _mm512_mask_add_epi32(up, _mm512_test_epi32_mask(b, _mm512_set1_epi32(0x10000)), up,
                                    _mm512_set1_epi32(1));
  r = _mm512_maskz_srli_epi32(0xFFFF, r, 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_maskz_cvtepi32_epi16(0xFFFF, r);
}
EIGEN_STRONG_INLINE __m512 round_bf16(__m512 v, type& bits) {
  bits = to_bf16(v);  // one instruction with AVX512_BF16, and one word permute back
  return from_bf16(bits);
}
EIGEN_STRONG_INLINE __m512 from_half(type v) { return _mm512_maskz_cvtph_ps(0xFFFF, v); }
EIGEN_STRONG_INLINE type to_half(__m512 v) { return _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT); }
#elif defined(EIGEN_VECTORIZE_AVX2)
inline constexpr bool bf16 = true;
#if defined(__F16C__)
inline constexpr bool half = true;
#else
inline constexpr bool half = false;
#endif
// AVX2 has no bfloat16 instructions, and the conversions compete with the kernels' arithmetic for
// the few vector ports that shift and shuffle (Zen 4: FP1/FP2; Intel: port 5 shuffles, ports 0/1
// shift): the 16-bit values are loaded into both 128-bit halves (a broadcast load, no shuffle), so
// that one in-lane byte shuffle both widens and shifts them, and the narrowing rounds with a
// compare instead of a shift and gathers the high halves with one byte shuffle and one quadword
// permute. Three such uops per packet converted both ways, instead of six. (half loads the same
// way; its conversions read the low half.)
EIGEN_STRONG_INLINE type load(const void* p) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}
EIGEN_STRONG_INLINE void store(void* p, type v, bool stream) {  // the 8 values in the low half
  if (stream) _mm_stream_si128(static_cast<__m128i*>(p), _mm256_castsi256_si128(v));
  else _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_castsi256_si128(v));
}
EIGEN_STRONG_INLINE __m256 from_bf16(type v) {  // value k into the high bytes of 32-bit lane k
  const __m256i widen = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,  //
                                         -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(v, widen));
}
// The rounded bfloat16 in the high half of each 32-bit lane (the low half is not cleared).
EIGEN_STRONG_INLINE __m256i rounded_high_halves(__m256 v) {
  // To nearest even: + 0x8000, less one when the kept part is even (bit 16 clear: the compare's -1).
  const __m256i b = _mm256_castps_si256(v);
  const __m256i even = _mm256_cmpeq_epi32(_mm256_and_si256(b, _mm256_set1_epi32(0x10000)), _mm256_setzero_si256());
  const __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x8000), even));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc00000), nan);
}
EIGEN_STRONG_INLINE type high_halves(__m256i r) {
  const __m256i high = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
  return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(r, high), 0x08);  // quadwords 0 and 2 below
}
EIGEN_STRONG_INLINE type to_bf16(__m256 v) { return high_halves(rounded_high_halves(v)); }
EIGEN_STRONG_INLINE __m256 round_bf16(__m256 v, type& bits) {
  const __m256i r = rounded_high_halves(v);
  bits = high_halves(r);
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-0x10000)));
}
#if defined(__F16C__)
EIGEN_STRONG_INLINE __m256 from_half(type v) { return _mm256_cvtph_ps(_mm256_castsi256_si128(v)); }
EIGEN_STRONG_INLINE type to_half(__m256 v) {
  return _mm256_zextsi128_si256(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif
#elif defined(EIGEN_VECTORIZE_SSE2) && !defined(EIGEN_VECTORIZE_AVX)  // 4-float packets
// SSE2 alone, the x86-64 baseline a distribution builds for: bfloat16 only (half needs F16C).
inline constexpr bool bf16 = true, half = false;
EIGEN_STRONG_INLINE type load(const void* p) { return _mm_loadl_epi64(static_cast<const __m128i*>(p)); }
EIGEN_STRONG_INLINE void store(void* p, type v, bool stream) {
#if defined(__x86_64__)
  if (stream) return _mm_stream_si64(static_cast<long long*>(p), _mm_cvtsi128_si64(v));
#endif
  static_cast<void>(stream);
  _mm_storel_epi64(static_cast<__m128i*>(p), v);
}
// The 16 bits of each value become the high half of a 32-bit lane whose low half is zero.
EIGEN_STRONG_INLINE __m128 from_bf16(type v) { return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), v)); }
// The rounded bfloat16 in the high half of each 32-bit lane (the low half is not cleared).
EIGEN_STRONG_INLINE __m128i rounded_high_halves(__m128 v) {
  const __m128i b = _mm_castps_si128(v);
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(b, 16), _mm_set1_epi32(1));
  const __m128i r = _mm_add_epi32(b, _mm_add_epi32(_mm_set1_epi32(0x7fff), lsb));
  const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
  return _mm_or_si128(_mm_andnot_si128(nan, r), _mm_and_si128(nan, _mm_set1_epi32(0x7fc00000)));
}
EIGEN_STRONG_INLINE type high_halves(__m128i r) {
  // SSE2 packs 32 to 16 bits with signed saturation only: the values (0 to 0xffff) are moved into
  // its range by -0x8000 and back by flipping the top bit of each 16-bit result.
  const __m128i biased = _mm_sub_epi32(_mm_srli_epi32(r, 16), _mm_set1_epi32(0x8000));
  return _mm_xor_si128(_mm_packs_epi32(biased, biased), _mm_set1_epi16(static_cast<short>(0x8000)));
}
EIGEN_STRONG_INLINE type to_bf16(__m128 v) { return high_halves(rounded_high_halves(v)); }
EIGEN_STRONG_INLINE __m128 round_bf16(__m128 v, type& bits) {
  const __m128i r = rounded_high_halves(v);
  bits = high_halves(r);
  return _mm_castsi128_ps(_mm_and_si128(r, _mm_set1_epi32(-0x10000)));
}
#else
inline constexpr bool bf16 = false, half = false;
#endif
}  // namespace bits16

// Whether T widens to A packet by packet with the conversions above; otherwise through a lane buffer.
template <class A, class T>
inline constexpr bool vector_convert = std::is_same_v<A, float> &&
                                       ((std::is_same_v<T, Eigen::bfloat16> && bits16::bf16) ||
                                        (std::is_same_v<T, Eigen::half> && bits16::half));

template <class A, class T>
EIGEN_STRONG_INLINE packet<A> load(const T* p) {
  if constexpr (std::is_same_v<A, T>) {
    return Eigen::internal::ploadu<packet<A>>(p);
  } else if constexpr (vector_convert<A, T>) {
    if constexpr (std::is_same_v<T, Eigen::bfloat16>) return bits16::from_bf16(bits16::load(p));
    else return bits16::from_half(bits16::load(p));
  } else {
    A lanes[width<A>];
    for (Index i = 0; i < width<A>; ++i) lanes[i] = static_cast<A>(p[i]);
    return Eigen::internal::ploadu<packet<A>>(lanes);
  }
}

// Stores a packet of A as width<A> values of T; stream: non-temporal (p must then be aligned).
template <class T, class V>
EIGEN_STRONG_INLINE void store_converted(T* p, const V& v, bool stream) {
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  if constexpr (vector_convert<A, T>) {
    if constexpr (std::is_same_v<T, Eigen::bfloat16>) bits16::store(p, bits16::to_bf16(v), stream);
    else bits16::store(p, bits16::to_half(v), stream);
  } else {
    A lanes[width<A>];
    Eigen::internal::pstoreu<A>(lanes, v);
    for (Index i = 0; i < width<A>; ++i) p[i] = static_cast<T>(lanes[i]);
  }
}

template <class T, class V>
EIGEN_STRONG_INLINE void store(T* p, const V& v) {
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  if constexpr (std::is_same_v<A, T>) Eigen::internal::pstoreu<T>(p, v);
  else store_converted(p, v, /*stream=*/false);
}

// Non-temporal ("streaming") stores write around the cache: for outputs far larger than the cache
// they save the read-for-ownership of every line and leave the cache to the data still to be read.
// They need an address aligned to the stored packet (width<A> values of T); which values of a run
// a sweep streams is fusion.hpp's stream_span (whole lines). A streaming sweep ends with
// stream_fence() before its results are handed to another thread.

template <class T, class V>
EIGEN_STRONG_INLINE void store(T* p, const V& v, bool stream) {
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  constexpr std::size_t bytes = sizeof(T) * width<A>;
  if (stream && reinterpret_cast<std::uintptr_t>(p) % bytes == 0) {
    if constexpr (std::is_same_v<A, T>) {
      // Unused where no branch below exists (NEON, no SIMD): those targets store ordinarily.
      [[maybe_unused]] constexpr bool is_float = std::is_same_v<T, float>;
#if defined(EIGEN_VECTORIZE_AVX512)
      if constexpr (bytes == 64) {
        if constexpr (is_float) _mm512_stream_ps(p, v);
        else _mm512_stream_pd(p, v);
        return;
      }
#endif
#if defined(EIGEN_VECTORIZE_AVX)
      if constexpr (bytes == 32) {
        if constexpr (is_float) _mm256_stream_ps(p, v);
        else _mm256_stream_pd(p, v);
        return;
      }
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
      if constexpr (bytes == 16) {
        if constexpr (is_float) _mm_stream_ps(p, v);
        else _mm_stream_pd(p, v);
        return;
      }
#endif
    } else {
      store_converted(p, v, vector_convert<A, T>);  // bfloat16/half: width<A> values of 16 bits
      return;
    }
  }
  store(p, v);  // no streaming store for this packet: an ordinary one
}

// Asks for the cache line at p to be brought into L2 (prefetcht1 on x86), not waiting for it.
EIGEN_ALWAYS_INLINE void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

inline void stream_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class A>
EIGEN_STRONG_INLINE packet<A> set1(A v) {
  return Eigen::internal::pset1<packet<A>>(v);
}

// The arithmetic below takes V = packet<A> or V = A itself (Eigen's generic padd & co. are the
// scalar operators), so that a kernel writes its formula once for the vector body and the tail.
template <class V>
EIGEN_STRONG_INLINE V add(const V& a, const V& b) {
  return Eigen::internal::padd(a, b);
}
template <class V>
EIGEN_STRONG_INLINE V sub(const V& a, const V& b) {
  return Eigen::internal::psub(a, b);
}
template <class V>
EIGEN_STRONG_INLINE V mul(const V& a, const V& b) {
  return Eigen::internal::pmul(a, b);
}
template <class V>
EIGEN_STRONG_INLINE V abs(const V& a) {
  return Eigen::internal::pabs(a);
}
template <class V>
EIGEN_STRONG_INLINE V max(const V& a, const V& b) {
#if defined(EIGEN_VECTORIZE_AVX512)  // Eigen's pmax here carries an _mm512_undefined operand (GCC bug 105593)
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  if constexpr (sizeof(V) == 64 && std::is_same_v<A, float>) return _mm512_maskz_max_ps(0xFFFF, a, b);
  if constexpr (sizeof(V) == 64 && std::is_same_v<A, double>) return _mm512_maskz_max_pd(0xFF, a, b);
#endif
  return Eigen::internal::pmax(a, b);
}
// Whether madd on packets is one rounding (the target has FMA; NEON on AArch64 has it always).
#if defined(EIGEN_VECTORIZE_FMA) || (defined(EIGEN_VECTORIZE_NEON) && defined(__ARM_FEATURE_FMA))
inline constexpr bool kFusedMadd = true;
#else
inline constexpr bool kFusedMadd = false;
#endif
// a * b + c, fused where the target has FMA. For packets and, in heads and tails, for scalars: the
// scalar form is fused exactly when the packet one is, so an element gets the same bits in the
// vector body and in a scalar edge (where the edges fall depends on the pointer's alignment for
// streaming stores; results must not). Kernels write every a * b + c they mean to fuse through
// madd, in both paths, rather than leave it to the compiler's contraction.
template <class V>
EIGEN_STRONG_INLINE V madd(const V& a, const V& b, const V& c) {
  if constexpr (std::is_floating_point_v<V>) {
#if defined(EIGEN_VECTORIZE_FMA)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
  } else {
    return Eigen::internal::pmadd(a, b, c);
  }
}
// Horizontal sum, pairwise by halves: the upper half of the lanes added to the lower half, until one
// lane is left (one vector add and one shuffle or extract per halving: 4 of each for 16 floats).
// Summed lane by lane in a tree of scalar adds instead, as GCC 12 compiled adjacent pairs, it took
// about 30 instructions for 16 floats, and the ColMajor backward's dx sweep sums twice per row of
// every strip (dweight, dbias; docs/benchmarks.md). Not Eigen's predux: with AVX-512, GCC 12 warns
// about the _mm256_undefined_pd inside it (GCC bug 105593) in every -Werror build of our users. With
// GCC and Clang the packet is a vector type whose lanes can be shuffled and read directly, which
// keeps the sum in registers; elsewhere it goes through memory, in the same order.
template <int Offset, class V, int... I>
EIGEN_STRONG_INLINE auto lanes_from(const V& a, std::integer_sequence<int, I...>) {
  return __builtin_shufflevector(a, a, (Offset + I)...);
}
template <int N, class V>
EIGEN_STRONG_INLINE auto sum_halves(const V& a) {
  if constexpr (N == 1) {
    return a[0];
  } else {
    constexpr std::make_integer_sequence<int, N / 2> half{};
    return sum_halves<N / 2>(lanes_from<0>(a, half) + lanes_from<N / 2>(a, half));
  }
}

template <class V>
EIGEN_STRONG_INLINE auto sum(const V& a) {
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  constexpr int n = Eigen::internal::unpacket_traits<V>::size;
  if constexpr (std::is_floating_point_v<V>) {
    return a;  // one lane (a formula's scalar tail)
  } else {
#if defined(__GNUC__)
    return static_cast<A>(sum_halves<n>(a));
#else
    A lanes[n];
    Eigen::internal::pstoreu<A>(lanes, a);
    for (int half = n / 2; half >= 1; half /= 2)
      for (int i = 0; i < half; ++i) lanes[i] += lanes[i + half];
    return lanes[0];
#endif
  }
}

// Float lanes summed in double: a sum of floats kept in double needs no compensation (each addition
// rounds at 2^-53 of the sum; a float result sees 2^-24), and widening costs less than a TwoSum.
// A packet of float is widened to two packets of double, its first and second halves; where there
// is no such pair (no SIMD, 32-bit NEON) lane by lane through memory.
struct WideSum {
#if defined(EIGEN_VECTORIZE_SSE2) || (defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__))
  packet<double> lo = set1<double>(0.0), hi = set1<double>(0.0);
#else
  double lanes[width<float>] = {};
#endif
  double tail = 0;    // scalar edges
  template <class V>  // a packet of float, or one float
  EIGEN_STRONG_INLINE void add(const V& v) {
    if constexpr (std::is_floating_point_v<V>) tail += double(v);
    else add_packet(v);
  }
  EIGEN_STRONG_INLINE void add_packet(const packet<float>& v) {
#if defined(EIGEN_VECTORIZE_AVX512)  // zero-masked forms: GCC bug 105593 (see max above)
    // the halves extracted (GCC 12's _mm512_castps512_ps256 also goes through an undefined operand)
    const __m512d d = _mm512_castps_pd(v);
    const __m256 first = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 0));
    const __m256 second = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 1));
    lo = _mm512_add_pd(lo, _mm512_maskz_cvtps_pd(0xFF, first));
    hi = _mm512_add_pd(hi, _mm512_maskz_cvtps_pd(0xFF, second));
#elif defined(EIGEN_VECTORIZE_AVX)
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
#elif defined(EIGEN_VECTORIZE_SSE2)
    lo = _mm_add_pd(lo, _mm_cvtps_pd(v));
    hi = _mm_add_pd(hi, _mm_cvtps_pd(_mm_movehl_ps(v, v)));
#elif defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__)
    lo = vaddq_f64(lo, vcvt_f64_f32(vget_low_f32(v)));
    hi = vaddq_f64(hi, vcvt_high_f64_f32(v));
#else
    constexpr int n = int(width<float>);
    float f[n];
    Eigen::internal::pstoreu(f, v);
    for (int l = 0; l < n; ++l) lanes[l] += double(f[l]);
#endif
  }
#if defined(EIGEN_VECTORIZE_SSE2) || (defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__))
  static constexpr int kParts = 2 * int(width<double>) + 1;
#else
  static constexpr int kParts = int(width<float>) + 1;
#endif
  // The partial sums (lanes, then the edges'), for the caller to add up.
  void store(double (&out)[kParts]) const {
#if defined(EIGEN_VECTORIZE_SSE2) || (defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__))
    constexpr int n = int(width<double>);
    Eigen::internal::pstoreu(out, lo), Eigen::internal::pstoreu(out + n, hi);
#else
    for (int l = 0; l + 1 < kParts; ++l) out[l] = lanes[l];
#endif
    out[kParts - 1] = tail;
  }
};

// Largest lane; for rare paths (through memory).
template <class V>
auto max_lane(const V& a) {
  using A = typename Eigen::internal::unpacket_traits<V>::type;
  constexpr std::size_t n = Eigen::internal::unpacket_traits<V>::size;
  A lanes[n];
  Eigen::internal::pstoreu<A>(lanes, a);
  A m = lanes[0];
  for (std::size_t i = 1; i < n; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

template <class A, class T>
EIGEN_STRONG_INLINE A load_scalar(const T* p) {
  return static_cast<A>(*p);
}
template <class T, class A>
EIGEN_STRONG_INLINE void store_scalar(T* p, A v) {
  *p = static_cast<T>(v);
}

// Lanes of either shape, for formulas written once: V is packet<A> (the vector body) or A (heads
// and tails, one value at a time). lane_t<V> is A in both cases.
template <class V>
using lane_t = typename Eigen::internal::unpacket_traits<V>::type;
template <class V>
inline constexpr bool is_scalar = std::is_floating_point_v<V>;

template <class V, class T>
EIGEN_STRONG_INLINE V loadv(const T* p) {
  if constexpr (is_scalar<V>) return load_scalar<V>(p);
  else return load<lane_t<V>>(p);
}
template <class V>
EIGEN_STRONG_INLINE V splat(lane_t<V> a) {
  if constexpr (is_scalar<V>) return a;
  else return set1<lane_t<V>>(a);
}
template <class T, class V>
EIGEN_STRONG_INLINE void storev(T* p, const V& v, bool stream = false) {
  if constexpr (is_scalar<V>) store_scalar<T>(p, v);
  else store(p, v, stream);
}
// v as it is, hidden from the optimizer: the operation that produced v is not fused with the next
// one. g++ contracts a * b + c into one FMA by default (-ffp-contract=fast, even with -std=c++17);
// where a result must equal the two-step form (store, then add), the product is passed through here.
template <class V>
EIGEN_STRONG_INLINE V rounded(V v) {
#if defined(__GNUC__) && defined(__AVX512F__)
  __asm__("" : "+v"(v));
#elif defined(__GNUC__) && defined(__SSE2__)
  __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#else
  volatile V through = v;  // elsewhere: through memory
  v = through;
#endif
  return v;
}

// v rounded to T's precision (once, to nearest even) and widened back: what storing v as T and
// loading it again gives.
template <class T, class V>
EIGEN_STRONG_INLINE V round_to(const V& v) {
  if constexpr (std::is_same_v<T, lane_t<V>>) {
    return v;
  } else if constexpr (!is_scalar<V> && vector_convert<lane_t<V>, T> && std::is_same_v<T, Eigen::bfloat16>) {
    bits16::type unused;
    return bits16::round_bf16(v, unused);
  } else {
    T lanes[Eigen::internal::unpacket_traits<V>::size];
    storev(lanes, v);
    return loadv<V>(lanes);
  }
}

// round_to<T>(v), also stored at p (stream: as store): one rounding to T where storing the
// widened result would round it a second time (bfloat16: eight integer operations per packet on
// AVX2, most of the residual forward's streamed sweep).
template <class T, class V>
EIGEN_STRONG_INLINE V store_rounded(T* p, const V& v, bool stream) {
  using A = lane_t<V>;
  if constexpr (std::is_same_v<T, A>) {
    storev(p, v, stream);
    return v;
  } else if constexpr (!is_scalar<V> && vector_convert<A, T>) {
    const bool aligned = reinterpret_cast<std::uintptr_t>(p) % (sizeof(T) * width<A>) == 0;
    bits16::type bits;
    if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
      const V back = bits16::round_bf16(v, bits);
      bits16::store(p, bits, stream && aligned);
      return back;
    } else {
      bits = bits16::to_half(v);  // from_half reads the low half, where to_half leaves the values
      bits16::store(p, bits, stream && aligned);
      return bits16::from_half(bits);
    }
  } else {
    storev(p, v, stream);
    return round_to<T>(v);
  }
}

// The packet at src, widened, with its values also stored unchanged at dst (stream: as store): a
// copy that narrows nothing (a kept residual sum, from a scratch row to h).
template <class V, class T>
EIGEN_STRONG_INLINE V load_copied(const T* src, T* dst, bool stream) {
  using A = lane_t<V>;
  if constexpr (std::is_same_v<T, A>) {
    const V v = loadv<V>(src);
    storev(dst, v, stream);
    return v;
  } else if constexpr (is_scalar<V> || !vector_convert<A, T>) {
    std::copy(src, src + Eigen::internal::unpacket_traits<V>::size, dst);
    return loadv<V>(src);
  } else {
    const bits16::type bits = bits16::load(src);
    bits16::store(dst, bits, stream && reinterpret_cast<std::uintptr_t>(dst) % (sizeof(T) * width<A>) == 0);
    if constexpr (std::is_same_v<T, Eigen::bfloat16>) return bits16::from_bf16(bits);
    else return bits16::from_half(bits);
  }
}

}  // namespace normkit::core::simd
