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
    CHECK(std::abs(static_cast<double>(m.m2 - e.m2)) < 1e-5 * static_cast<double>(e.m2) + 1e-3);
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

TEST_CASE("rstd follows the eps placement; a non-finite variance poisons the group", "[core][moments]") {
  CHECK(normkit::core::rstd_from_var(4.0, 0.5, true) == Approx(1 / std::sqrt(4.5)));
  CHECK(normkit::core::rstd_from_var(4.0, 0.5, false) == Approx(1 / 2.5));
  CHECK(std::isinf(normkit::core::rstd_from_var(0.0f, 0.0, true)));
  CHECK(std::isnan(normkit::core::detail::group_rstd(INFINITY, 1e-5, true)));
  CHECK(std::isnan(normkit::core::detail::group_rstd(NAN, 1e-5, true)));
}
