// Tests for core/moments.hpp: the corrected two-pass moments and Chan's merge, against long double.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "normkit/core/groups.hpp"

using normkit::core::Index;
using normkit::core::merge;
using normkit::core::Moments;

namespace {

struct Exact {
  long double mean, m2;
};
Exact exact(const std::vector<float>& x) {
  long double s = 0;
  for (float v : x) s += v;
  const long double mean = s / x.size();
  long double m2 = 0;
  for (float v : x) m2 += (v - mean) * (v - mean);
  return {mean, m2};
}

}  // namespace

TEST_CASE("run moments keep the mean exact to float rounding at a large offset", "[core][moments]") {
  // x = 1e4 + N(0, 1e-2): the mean's float rounding (ulp 1e-3) is 10% of the std. The hi/lo pair must
  // carry the mean to well below that; a plain float mean could not.
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 1e-2f);
  std::vector<float> x(4096);
  for (float& v : x) v = 1e4f + noise(rng);
  const Exact e = exact(x);
  const Moments<float> m = normkit::core::detail::run_moments<float>(x.data(), Index(x.size()), true);
  const long double mean = static_cast<long double>(m.mean) + m.mean_lo;
  CHECK(std::abs(static_cast<double>(mean - e.mean)) < 1e-6);
  CHECK(std::abs(static_cast<double>(m.m2 - e.m2)) < 1e-3 * static_cast<double>(e.m2));
}

TEST_CASE("Chan's merge of blocks equals the moments of the whole", "[core][moments]") {
  std::mt19937 rng(3);
  std::normal_distribution<float> noise(0.f, 1.f);
  for (Index n : {Index(1), Index(7), Index(100), Index(1000)}) {
    std::vector<float> x(static_cast<std::size_t>(3 * n));
    float offset = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (i % static_cast<std::size_t>(n) == 0) offset += 50.f;  // blocks with different means
      x[i] = offset + noise(rng);
    }
    Moments<float> m;
    for (int b = 0; b < 3; ++b) m = merge(m, normkit::core::detail::run_moments<float>(x.data() + b * n, n, true));
    const Exact e = exact(x);
    CHECK(m.count == 3 * n);
    CHECK(std::abs(static_cast<double>(m.mean + static_cast<long double>(m.mean_lo) - e.mean)) < 1e-5 * 150);
    CHECK(std::abs(static_cast<double>(std::ldexp(m.m2, 2 * m.exp2) - e.m2)) < 1e-5 * static_cast<double>(e.m2) + 1e-3);
  }
}

TEST_CASE("a constant run has zero variance and a mean that cancels exactly", "[core][moments]") {
  for (float c : {0.1f, -3.7f, 12345.678f, 1e-30f}) {
    for (Index n : {Index(1), Index(3), Index(17), Index(4099)}) {
      const std::vector<float> x(static_cast<std::size_t>(n), c);
      const Moments<float> m = normkit::core::detail::run_moments<float>(x.data(), n, true);
      CHECK(m.m2 == 0.f);
      CHECK((c - m.mean) - m.mean_lo == 0.f);
    }
  }
}

TEST_CASE("rstd follows the eps placement; non-finite moments poison the group", "[core][moments]") {
  using normkit::core::rstd_from_var;
  CHECK(rstd_from_var<double>(4.0L, 0.5, true) == Approx(1 / std::sqrt(4.5)));
  CHECK(rstd_from_var<double>(4.0L, 0.5, false) == Approx(1 / 2.5));
  CHECK(std::isinf(rstd_from_var<float>(0.0L, 0.0, true)));
  CHECK(std::isnan(normkit::core::detail::group_rstd(Moments<float>{4, 1.f, 0.f, INFINITY}, 1e-5, true)));
  CHECK(std::isnan(normkit::core::detail::group_rstd(Moments<float>{4, NAN, 0.f, 1.f}, 1e-5, true)));
}

TEST_CASE("runs whose squares overflow or underflow float get exact-scale moments", "[core][moments]") {
  // Values whose squares leave float's range, and rows near FLT_MAX whose plain sum overflows.
  for (const double magnitude : {1e-40, 1e-30, 1e20, 1e30, 1e36}) {
    std::mt19937 rng(11);
    std::normal_distribution<double> noise(0, 1);
    for (const bool centered : {true, false}) {
      std::vector<float> x(1000);
      for (float& v : x) v = static_cast<float>(magnitude * (1.5 + noise(rng)));
      long double mean = 0, m2 = 0;
      for (float v : x) mean += v;
      mean = centered ? mean / x.size() : 0;
      for (float v : x) m2 += (v - mean) * (v - mean);
      const Moments<float> m = normkit::core::detail::run_moments<float>(x.data(), Index(x.size()), centered);
      INFO("magnitude " << magnitude << " centered " << centered);
      const long double var = std::ldexp(static_cast<long double>(m.m2) / m.count, 2 * m.exp2);
      CHECK(std::abs(static_cast<double>(var / (m2 / x.size()) - 1)) < 1e-4);
      if (centered)
        CHECK(std::abs(static_cast<double>((m.mean + static_cast<long double>(m.mean_lo)) / mean - 1)) < 1e-4);
      // With eps = 0, rstd = 1/std; at 1e-40 that is beyond float (a documented limit), so not checked.
      if (magnitude > 1e-38) {
        const float rstd = normkit::core::rstd_from_moments(m, 0.0, true);
        CHECK(std::isfinite(rstd));
        CHECK(std::abs(static_cast<double>(rstd * std::sqrt(m2 / x.size()) - 1)) < 1e-4);
      }
    }
  }
  // Blocks of different scales merge exactly.
  std::vector<float> big(64, 3e30f), small(64, 1.f);
  big[0] = 1e30f;
  const Moments<float> a = normkit::core::detail::run_moments<float>(big.data(), 64, true);
  const Moments<float> b = normkit::core::detail::run_moments<float>(small.data(), 64, true);
  const Moments<float> ab = merge(a, b);
  CHECK(std::isfinite(normkit::core::variance(ab)) == false);  // 1e60 is beyond float: inf, honestly
  CHECK(std::isfinite(normkit::core::rstd_from_moments(ab, 1e-5, true)));
}

TEST_CASE("merging blocks whose means are far apart does not overflow", "[core][moments]") {
  // Each block is constant, so in range on its own (m2 = 0); the union's m2 = n/4 * (2e30)^2 is not.
  // Found by the fuzzer as BatchNorm planes at +1e30 and -1e30 giving NaN.
  for (const float magnitude : {1e20f, 1e30f, 3e37f}) {
    CAPTURE(magnitude);
    std::vector<float> plus(16, magnitude), minus(16, -magnitude);
    const Moments<float> a = normkit::core::detail::run_moments<float>(plus.data(), 16, true);
    const Moments<float> b = normkit::core::detail::run_moments<float>(minus.data(), 16, true);
    if (magnitude <= 1e30f) {  // in range on their own (3e37's first-packet sum overflows: rescaled)
      REQUIRE(a.exp2 == 0);
      REQUIRE(b.exp2 == 0);
    }
    const Moments<float> ab = merge(a, b);
    CHECK(ab.mean + ab.mean_lo == 0.0f);
    const float rstd = normkit::core::rstd_from_moments(ab, 0.0, true);  // std = magnitude
    CHECK(std::abs(static_cast<double>(rstd) * magnitude - 1) < 1e-6);
  }
}
