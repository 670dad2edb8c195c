// normkit/dispatch.hpp — the best kernels at run time from one binary built for a baseline CPU.
//
// normkit is header-only, so its kernels are compiled with the flags of the translation unit that
// includes them: a distribution building for plain x86-64 gets SSE2 kernels on an AVX-512 machine.
// To choose at run time, put the hot code in a source file of its own and let the CMake helper
// normkit_isa_variants(<target> SOURCES <files>) (cmake/NormkitDispatch.cmake) compile it once per
// x86-64 level — x86-64 (SSE2), x86-64-v2 (SSE4.2), x86-64-v3 (AVX2+FMA), x86-64-v4 (AVX-512) —
// with NORMKIT_ISA naming the level. Then:
//
//   // hot.cpp, compiled four times:
//   void NORMKIT_ISA_FN(forward_rows)(const normkit::LayerNorm<float>& ln, const float* x, float* y, long rows) {...}
//   // the caller, compiled once for the baseline:
//   NORMKIT_ISA_DECLARE(void, forward_rows, (const normkit::LayerNorm<float>&, const float*, float*, long));
//   auto* forward = normkit::dispatch::pick(NORMKIT_ISA_VARIANTS(forward_rows));
//   forward(ln, x, y, rows);
//
// Why a link step and not just four object files: every inline function and template instance
// (normkit's kernels, Eigen's packet functions, the standard library's) is a weak symbol, and the
// linker keeps one copy of each for the whole program, so AVX-512 code could be called from the
// SSE2 path (an illegal instruction on an older CPU) or the other way round (a different calling
// convention for vector arguments: wrong results or a crash, as a first prototype without the
// step below did). The helper therefore links each level's objects into one relocatable object
// with `ld -r --force-group-allocation` and makes every symbol in it local except the
// NORMKIT_ISA_FN entry points (`objcopy --keep-global-symbol`): each level keeps private copies of
// everything it inlines.
// That needs GNU ld (ld.bfd, also beside clang) and objcopy, as on Linux.
//
// The boundary: pass pointers, Eigen::TensorMap and normkit functors by const reference (their
// layout is the same at every level). Do not pass or return objects that own Eigen storage
// (Eigen::Tensor, normkit::NormStats) across it: their alignment, and so how they are freed,
// differs between levels. State shared with the rest of the program (a function-local static) is
// copied per level, so keep it out of the per-level sources.
#pragma once

#define NORMKIT_ISA_CAT2(name, suffix) name##suffix
#define NORMKIT_ISA_CAT(name, suffix) NORMKIT_ISA_CAT2(name, suffix)

// The entry point's name in a per-level source: name_nk_x86_64, name_nk_v2, name_nk_v3, name_nk_v4
// (name_nk_base off x86-64). NORMKIT_ISA comes from normkit_isa_variants().
#ifdef NORMKIT_ISA
#define NORMKIT_ISA_FN(name) NORMKIT_ISA_CAT(name, NORMKIT_ISA)
#endif

#if defined(__x86_64__)
#define NORMKIT_ISA_DECLARE(ret, name, params) \
  ret name##_nk_x86_64 params;                 \
  ret name##_nk_v2 params;                     \
  ret name##_nk_v3 params;                     \
  ret name##_nk_v4 params
#define NORMKIT_ISA_VARIANTS(name) name##_nk_x86_64, name##_nk_v2, name##_nk_v3, name##_nk_v4
#else
// One level elsewhere: aarch64's baseline already has NEON, normkit's only SIMD there.
#define NORMKIT_ISA_DECLARE(ret, name, params) ret name##_nk_base params
#define NORMKIT_ISA_VARIANTS(name) name##_nk_base
#endif

namespace normkit::dispatch {

enum class Level { x86_64, v2, v3, v4, base };

inline const char* level_name(Level level) {
  switch (level) {
    case Level::x86_64: return "x86-64";
    case Level::v2: return "x86-64-v2";
    case Level::v3: return "x86-64-v3";
    case Level::v4: return "x86-64-v4";
    case Level::base: return "base";
  }
  return "?";
}

#if defined(__x86_64__)
// The features each level's -march turns on that normkit's kernels (through Eigen) or the compiler
// use. __builtin_cpu_supports also checks that the OS saves the AVX/AVX-512 registers (XCR0).
// F16C (also in v3) is not asked for: clang 14 cannot, and every CPU with AVX2 has it (Intel since
// Ivy Bridge, AMD since Piledriver).
inline Level best_level() {
  __builtin_cpu_init();
  const bool v2 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("ssse3") &&
                  __builtin_cpu_supports("popcnt");
  const bool v3 = v2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
  return v4 ? Level::v4 : v3 ? Level::v3 : v2 ? Level::v2 : Level::x86_64;
}

template <class Fn>
Fn pick(Fn x86_64, Fn v2, Fn v3, Fn v4, Level level = best_level()) {
  switch (level) {
    case Level::v4: return v4;
    case Level::v3: return v3;
    case Level::v2: return v2;
    default: return x86_64;
  }
}
#else
inline Level best_level() { return Level::base; }

template <class Fn>
Fn pick(Fn base, Level = Level::base) {
  return base;
}
#endif

}  // namespace normkit::dispatch
