// normkit/core/simd.hpp — the few packet operations the kernels use, over Eigen's packet math.
//
// Eigen picks the widest packet the compiler was told about (-march=...): 16 floats with AVX-512,
// 8 with AVX, 4 with SSE/NEON. Kernels are written once against these helpers. Loads and stores
// are unaligned: callers' tensors start anywhere. Storage type T and accumulation type A are
// separate template parameters so that narrow storage (bfloat16/half) can later widen on load and
// round once on store without touching the kernels.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include <Eigen/Core>

namespace normkit::core::simd {

using Eigen::Index;

template <class A>
using packet = typename Eigen::internal::packet_traits<A>::type;

template <class A>
inline constexpr Index width = Eigen::internal::unpacket_traits<packet<A>>::size;

template <class A, class T>
EIGEN_STRONG_INLINE packet<A> load(const T* p) {
  static_assert(std::is_same_v<A, T>, "normkit: only same-type loads so far (float, double)");
  return Eigen::internal::ploadu<packet<A>>(p);
}

template <class T, class P>
EIGEN_STRONG_INLINE void store(T* p, const P& v) {
  Eigen::internal::pstoreu<T>(p, v);
}

// Non-temporal ("streaming") stores write around the cache: for outputs far larger than the cache
// they save the read-for-ownership of every line and leave the cache to the data still to be read.
// They need an address aligned to the packet; aligned_head(p, n) is how many scalars come first.
// A streaming sweep ends with stream_fence() before its results are handed to another thread.
template <class T>
EIGEN_STRONG_INLINE Index aligned_head(const T* p, Index n, bool stream) {
  if (!stream) return 0;
  constexpr std::uintptr_t bytes = sizeof(packet<T>);
  const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(p) % bytes;
  const Index head = misalign == 0 || misalign % sizeof(T) ? 0 : Index((bytes - misalign) / sizeof(T));
  return head < n ? head : n;
}

template <class T, class P>
EIGEN_STRONG_INLINE void store(T* p, const P& v, bool stream) {
  if (stream && reinterpret_cast<std::uintptr_t>(p) % sizeof(P) == 0) {
    constexpr bool is_float = std::is_same_v<T, float>;
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (sizeof(P) == 64) {
      if constexpr (is_float) _mm512_stream_ps(p, v);
      else _mm512_stream_pd(p, v);
      return;
    }
#endif
#if defined(EIGEN_VECTORIZE_AVX)
    if constexpr (sizeof(P) == 32) {
      if constexpr (is_float) _mm256_stream_ps(p, v);
      else _mm256_stream_pd(p, v);
      return;
    }
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
    if constexpr (sizeof(P) == 16) {
      if constexpr (is_float) _mm_stream_ps(p, v);
      else _mm_stream_pd(p, v);
      return;
    }
#endif
  }
  Eigen::internal::pstoreu<T>(p, v);  // no streaming store for this packet: an ordinary one
}

inline void stream_fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class A>
EIGEN_STRONG_INLINE packet<A> set1(A v) { return Eigen::internal::pset1<packet<A>>(v); }

template <class P> EIGEN_STRONG_INLINE P add(const P& a, const P& b) { return Eigen::internal::padd(a, b); }
template <class P> EIGEN_STRONG_INLINE P sub(const P& a, const P& b) { return Eigen::internal::psub(a, b); }
template <class P> EIGEN_STRONG_INLINE P mul(const P& a, const P& b) { return Eigen::internal::pmul(a, b); }
// a * b + c
template <class P> EIGEN_STRONG_INLINE P madd(const P& a, const P& b, const P& c) { return Eigen::internal::pmadd(a, b, c); }
// Horizontal sum, pairwise. Not Eigen's predux: with AVX-512, GCC 12 warns about the
// _mm256_undefined_pd inside it (GCC bug 105593) in every -Werror build of our users. With GCC and
// Clang the packet is a vector type whose lanes can be read directly, which keeps the sum in
// registers; elsewhere it goes through memory.
template <int Lo, int N, class P>
EIGEN_STRONG_INLINE auto sum_lanes(const P& a) {
  if constexpr (N == 1) return a[Lo];
  else return sum_lanes<Lo, N / 2>(a) + sum_lanes<Lo + N / 2, N / 2>(a);
}

template <class P>
EIGEN_STRONG_INLINE auto sum(const P& a) {
  using A = typename Eigen::internal::unpacket_traits<P>::type;
  constexpr int n = Eigen::internal::unpacket_traits<P>::size;
#if defined(__GNUC__)
  return static_cast<A>(sum_lanes<0, n>(a));
#else
  A lanes[n];
  Eigen::internal::pstoreu<A>(lanes, a);
  for (int step = 1; step < n; step *= 2)
    for (int i = 0; i + step < n; i += 2 * step) lanes[i] += lanes[i + step];
  return lanes[0];
#endif
}

// Scalar edges use the same helpers so a kernel reads the same for its body and its tail.
template <class A, class T> EIGEN_STRONG_INLINE A load_scalar(const T* p) { return static_cast<A>(*p); }
template <class T, class A> EIGEN_STRONG_INLINE void store_scalar(T* p, A v) { *p = static_cast<T>(v); }

}  // namespace normkit::core::simd
