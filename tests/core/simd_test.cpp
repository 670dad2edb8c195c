// core/simd.hpp's conversions between 16-bit storage and float packets, checked exhaustively
// against Eigen's scalar conversions (which round to nearest even): every bfloat16 and half bit
// pattern widened, and every value, midpoint and near-midpoint narrowed, through the ordinary and
// the non-temporal store. And the horizontal sum's order.
#include <normkit/core/simd.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

namespace simd = normkit::core::simd;
using Index = Eigen::Index;
constexpr Index W = simd::width<float>;

template <class T>
std::uint16_t bits(T v) {
  return Eigen::numext::bit_cast<std::uint16_t>(v);
}
std::uint32_t bits(float v) { return Eigen::numext::bit_cast<std::uint32_t>(v); }

// All 65536 values of T, in bit-pattern order.
template <class T>
std::vector<T> all_values() {
  std::vector<T> v(1 << 16);
  for (std::uint32_t b = 0; b < (1u << 16); ++b) v[b] = Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(b));
  return v;
}

// Floats that exercise rounding to T: each finite value of T, the midpoint to its successor (a tie),
// one float ulp either side of that midpoint, and float's own extremes.
template <class T>
std::vector<float> narrowing_inputs() {
  std::vector<float> in;
  for (const T t : all_values<T>()) {
    const float v = static_cast<float>(t);
    if (!std::isfinite(v)) continue;
    in.push_back(v);
    const std::uint16_t b = bits(t);
    if ((b & 0x7fff) == 0x7fff) continue;
    const float next = static_cast<float>(Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(b + 1)));
    const float mid = static_cast<float>((static_cast<double>(v) + static_cast<double>(next)) / 2);
    in.push_back(mid);
    in.push_back(std::nextafter(mid, -std::numeric_limits<float>::infinity()));
    in.push_back(std::nextafter(mid, std::numeric_limits<float>::infinity()));
  }
  for (const float v : {std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min(),
                        std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 0.0f, -0.0f,
                        std::numeric_limits<float>::quiet_NaN(), 1e-40f, 65519.99f, 65520.0f, 3.3895e38f})
    in.push_back(v);
  while (in.size() % std::size_t(W)) in.push_back(1.0f);
  return in;
}

template <class T>
void check_widening() {
  const std::vector<T> values = all_values<T>();
  std::vector<float> lanes(static_cast<std::size_t>(W));
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < values.size(); i += std::size_t(W)) {
    Eigen::internal::pstoreu(lanes.data(), simd::load<float>(values.data() + i));
    for (std::size_t k = 0; k < std::size_t(W); ++k) {
      const float want = static_cast<float>(values[i + k]);
      const bool same = std::isnan(want) ? std::isnan(lanes[k]) : bits(lanes[k]) == bits(want);
      if (!same && ++mismatches <= 5)
        FAIL_CHECK("pattern " << bits(values[i + k]) << ": got " << lanes[k] << " want " << want);
    }
  }
  CHECK(mismatches == 0);
}

// How a packet is narrowed: store; store_rounded, whose result must also be the stored values
// widened back; or store, with round_to's result checked the same way.
enum class Narrowing { Store, StoreRounded, RoundTo };

template <class T>
void check_narrowing(bool stream, Narrowing how = Narrowing::Store) {
  const bool returned = how != Narrowing::Store;
  const std::vector<float> in = narrowing_inputs<T>();
  // A packet-aligned output, as a streaming store needs.
  std::vector<T> storage(in.size() + std::size_t(W));
  T* out = storage.data();
  while (reinterpret_cast<std::uintptr_t>(out) % (sizeof(T) * std::size_t(W))) ++out;
  std::vector<float> back(in.size());
  for (std::size_t i = 0; i < in.size(); i += std::size_t(W)) {
    const simd::packet<float> v = simd::load<float>(in.data() + i);
    if (how == Narrowing::StoreRounded) {
      Eigen::internal::pstoreu(back.data() + i, simd::store_rounded(out + i, v, stream));
    } else {
      simd::store(out + i, v, stream);
      if (how == Narrowing::RoundTo) Eigen::internal::pstoreu(back.data() + i, simd::round_to<T>(v));
    }
  }
  simd::stream_fence();
  std::size_t mismatches = 0;
  for (std::size_t i = 0; returned && i < in.size(); ++i) {
    const float stored = static_cast<float>(out[i]);
    if (!(std::isnan(stored) ? std::isnan(back[i]) : bits(back[i]) == bits(stored)) && ++mismatches <= 5)
      FAIL_CHECK(std::hexfloat << in[i] << ": returned " << back[i] << ", stored " << stored);
  }
  for (std::size_t i = 0; i < in.size(); ++i) {
    const T want = static_cast<T>(in[i]);
    const bool same = std::isnan(in[i]) ? std::isnan(static_cast<float>(out[i])) : bits(out[i]) == bits(want);
    if (!same && ++mismatches <= 5)
      FAIL_CHECK(std::hexfloat << in[i] << ": got " << static_cast<float>(out[i]) << " want "
                               << static_cast<float>(want));
  }
  CHECK(mismatches == 0);
  CHECK(in.size() > 100000);  // the inputs really cover the format
}

}  // namespace

TEST_CASE("bfloat16 packets widen to exactly the float Eigen gives, for all 65536 patterns", "[simd][bf16]") {
  check_widening<Eigen::bfloat16>();
}

TEST_CASE("half packets widen to exactly the float Eigen gives, for all 65536 patterns", "[simd][half]") {
  check_widening<Eigen::half>();
}

TEST_CASE("float packets round to bfloat16 to nearest even, ties, overflow and NaN included", "[simd][bf16]") {
  SECTION("ordinary stores") { check_narrowing<Eigen::bfloat16>(false); }
  SECTION("non-temporal stores") { check_narrowing<Eigen::bfloat16>(true); }
  SECTION("store_rounded, ordinary and non-temporal") {
    check_narrowing<Eigen::bfloat16>(false, Narrowing::StoreRounded);
    check_narrowing<Eigen::bfloat16>(true, Narrowing::StoreRounded);
  }
  SECTION("round_to") { check_narrowing<Eigen::bfloat16>(false, Narrowing::RoundTo); }
}

TEST_CASE("float packets round to half to nearest even, subnormals and overflow included", "[simd][half]") {
  SECTION("ordinary stores") { check_narrowing<Eigen::half>(false); }
  SECTION("non-temporal stores") { check_narrowing<Eigen::half>(true); }
  SECTION("store_rounded, ordinary and non-temporal") {
    check_narrowing<Eigen::half>(false, Narrowing::StoreRounded);
    check_narrowing<Eigen::half>(true, Narrowing::StoreRounded);
  }
  SECTION("round_to") { check_narrowing<Eigen::half>(false, Narrowing::RoundTo); }
}

TEST_CASE("float and double packets round-trip unchanged", "[simd]") {
  std::vector<float> f(static_cast<std::size_t>(W)), g(f.size());
  std::vector<double> d(static_cast<std::size_t>(simd::width<double>)), e(d.size());
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = 1.0f / static_cast<float>(i + 3);
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = 1.0 / static_cast<double>(i + 3);
  simd::store(g.data(), simd::load<float>(f.data()));
  simd::store(e.data(), simd::load<double>(d.data()));
  CHECK(f == g);
  CHECK(d == e);
}

// simd::sum adds the upper half of the lanes to the lower half until one is left: with GCC and
// Clang by vector shuffles, elsewhere through memory. Both must give the bits of that order, which
// is checked here on lanes of mixed sign and magnitude, where another order rounds differently.
TEMPLATE_TEST_CASE("horizontal sums add the lanes by halves", "[simd]", float, double) {
  using T = TestType;
  constexpr Index n = simd::width<T>;
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-30, 30);
  std::vector<T> lanes(static_cast<std::size_t>(n));
  for (int trial = 0; trial < 1000; ++trial) {
    for (T& v : lanes) v = static_cast<T>(std::ldexp(mantissa(gen), exponent(gen)));
    std::vector<T> by_halves = lanes;
    for (Index half = n / 2; half >= 1; half /= 2)
      for (Index i = 0; i < half; ++i)
        by_halves[static_cast<std::size_t>(i)] += by_halves[static_cast<std::size_t>(i + half)];
    const T got = simd::sum(simd::load<T>(lanes.data()));
    INFO("trial " << trial);
    REQUIRE(got == by_halves[0]);
  }
}
