// normkit::simd_path(): the name of the SIMD instruction set the kernels were compiled for.
//
// Two independent checks: the name agrees with the compiler's own target macros (__AVX512F__,
// __AVX2__, ..., not Eigen's, which simd_path reads), and with the width of the packets the kernels
// actually use (core::simd::width<float>): 16 floats for AVX-512, 8 for AVX/AVX2, 4 for SSE and
// NEON, 1 for scalar. The test suite builds with -march=native, so on the CI machine this checks
// the native answer; any other -march is checked the same way when the suite is built with it.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <string>

namespace {

// What the compiler says it targets, widest first, as simd_path() should name it.
std::string compiler_target() {
#if defined(EIGEN_DONT_VECTORIZE)
  return "scalar";
#elif defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__SSE4_2__)
  return "SSE4.2";
#elif defined(__SSE4_1__)
  return "SSE4.1";
#elif defined(__SSSE3__)
  return "SSSE3";
#elif defined(__SSE3__)
  return "SSE3";
#elif defined(__SSE2__) || defined(_M_X64)
  return "SSE2";
#elif defined(__ARM_FEATURE_SVE) && defined(EIGEN_ARM64_USE_SVE)
  return "SVE";
#elif defined(__ARM_NEON)
  return "NEON";
#else
  return "";  // not a target this test knows: only the packet width below is checked
#endif
}

}  // namespace

TEST_CASE("simd_path is a compile-time constant", "[simd_path]") {
  constexpr const char* path = normkit::simd_path();
  static_assert(path[0] != '\0', "simd_path() must name something");
  CHECK(std::strlen(path) > 0);
}

TEST_CASE("simd_path names the compiler's target", "[simd_path]") {
  const std::string want = compiler_target();
  INFO("simd_path() = " << normkit::simd_path() << ", compiler target = " << want);
  if (!want.empty()) CHECK(std::string(normkit::simd_path()) == want);
}

TEST_CASE("simd_path agrees with the kernels' packet width", "[simd_path]") {
  const std::string path = normkit::simd_path();
  const auto width = normkit::core::simd::width<float>;
  INFO("simd_path() = " << path << ", packet<float> holds " << width);
  if (path == "AVX-512") CHECK(width == 16);
  else if (path == "AVX2" || path == "AVX") CHECK(width == 8);
  else if (path.rfind("SSE", 0) == 0 || path == "SSSE3" || path == "NEON") CHECK(width == 4);
  else if (path == "scalar") CHECK(width == 1);
  else CHECK(width >= 1);
}
