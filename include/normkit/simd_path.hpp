// normkit/simd_path.hpp — which SIMD instruction set normkit's kernels were compiled for.
//
// normkit is header-only: its kernels vectorize for whatever the compiler is told (-march=...),
// through Eigen's packet math, so the answer belongs to the translation unit that includes this
// header, not to an installed library. simd_path() names the widest set Eigen enabled there, read
// from Eigen's own macros (EIGEN_VECTORIZE_AVX512, ...): "AVX-512", "AVX2", "AVX", "SSE4.2",
// "SSE4.1", "SSSE3", "SSE3", "SSE2", "SVE", "NEON", "VSX", "AltiVec", "other" (a target Eigen
// vectorizes that is not listed here), or "scalar" (no vectorization, e.g. EIGEN_DONT_VECTORIZE).
// Print it to check a build: plain g++ on x86-64 gives "SSE2", and there LayerNorm 4096x768 runs
// about 3x slower than with -march=native on an AVX-512 machine (docs/api.md, "Performance").
#pragma once

#include <Eigen/Core>

namespace normkit {

// static: each translation unit answers for its own flags (an inline function whose body differs
// between translation units compiled with different -march would break the one-definition rule).
static constexpr const char* simd_path() noexcept {
#if defined(EIGEN_VECTORIZE_AVX512)
  return "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2)
  return "AVX2";
#elif defined(EIGEN_VECTORIZE_AVX)
  return "AVX";
#elif defined(EIGEN_VECTORIZE_SSE4_2)
  return "SSE4.2";
#elif defined(EIGEN_VECTORIZE_SSE4_1)
  return "SSE4.1";
#elif defined(EIGEN_VECTORIZE_SSSE3)
  return "SSSE3";
#elif defined(EIGEN_VECTORIZE_SSE3)
  return "SSE3";
#elif defined(EIGEN_VECTORIZE_SSE2)
  return "SSE2";
#elif defined(EIGEN_VECTORIZE_SVE)
  return "SVE";
#elif defined(EIGEN_VECTORIZE_NEON)
  return "NEON";
#elif defined(EIGEN_VECTORIZE_VSX)
  return "VSX";
#elif defined(EIGEN_VECTORIZE_ALTIVEC)
  return "AltiVec";
#elif defined(EIGEN_VECTORIZE)
  return "other";
#else
  return "scalar";
#endif
}

}  // namespace normkit
