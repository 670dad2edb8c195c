// tests/deepnorm_test.cpp — DeepNorm's constants (deepnorm.hpp) against the closed forms of Wang et
// al. 2022 ("DeepNet", Figure 2) as the contract states them, for several layer counts.
//
// (Only this header, not the Eigen-heavy normkit.hpp: tests/batch_norm_fold_test.cpp checks that the
// umbrella header brings it.) Two kinds of check:
//   - exact algebraic values where the formulas give them (encoder-only N = 2: alpha = sqrt(2),
//     beta = 1/2; N = 8: alpha = 2; decoder M = 27: alpha = 3; ...), written as literals or as
//     sqrt of a small integer;
//   - for other counts, the formula evaluated another way in long double (pow of the whole product,
//     e.g. (N^4 M)^(1/16) directly).
// Tolerance 4 ulps relative (4 * 2^-52 ~ 8.9e-16): the library's pow is within 1 ulp per call and a
// value is at most two pow results, their product and a multiplication by 0.81 or 0.87 (itself
// rounded to double, 1/2 ulp), so under 4 ulps; a wrong exponent or coefficient (1/4 vs 1/16, 8 vs 12, 0.81 vs 0.87) is
// off by more than 1e-3 at every count tested.
#include <normkit/deepnorm.hpp>

#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

namespace {

constexpr double kTol = 4 * 0x1p-52;

bool close(double got, long double want) {
  return std::fabs(static_cast<long double>(got) - want) <= kTol * std::fabs(want);
}

long double quartic(long double k, int layers) { return std::pow(k * layers, 0.25L); }

}  // namespace

TEST_CASE("DeepNorm encoder-only and decoder-only: alpha = (2L)^(1/4), beta = (8L)^(-1/4)", "[deepnorm]") {
  // Exact values: L = 2 -> (4)^(1/4) = sqrt 2, (16)^(-1/4) = 1/2; L = 8 -> 2 and 64^(-1/4) = 1/(2 sqrt 2);
  // L = 18 -> sqrt 6 and 1/sqrt 12; L = 1 -> 2^(1/4) and 8^(-1/4).
  struct Case {
    int layers;
    long double alpha, beta;
  };
  const Case cases[] = {{1, std::pow(2.0L, 0.25L), std::pow(8.0L, -0.25L)},
                        {2, std::sqrt(2.0L), 0.5L},
                        {8, 2.0L, 1 / (2 * std::sqrt(2.0L))},
                        {18, std::sqrt(6.0L), 1 / std::sqrt(12.0L)},
                        {128, 4.0L, 1 / std::sqrt(32.0L)}};
  for (const Case& c : cases) {
    for (const auto& [name, s] : {std::pair{"encoder_only", normkit::deepnorm_encoder_only(c.layers)},
                                  std::pair{"decoder_only", normkit::deepnorm_decoder_only(c.layers)}}) {
      INFO(name << "(" << c.layers << "): alpha " << s.alpha << ", beta " << s.beta);
      CHECK(close(s.alpha, c.alpha));
      CHECK(close(s.beta, c.beta));
    }
  }
  // The paper's own scale: the 200-layer (100-100) and 1000-layer models; and every count up to 1000.
  for (int layers = 1; layers <= 1000; ++layers) {
    const normkit::DeepNormScale e = normkit::deepnorm_encoder_only(layers);
    const normkit::DeepNormScale d = normkit::deepnorm_decoder_only(layers);
    INFO("layers " << layers);
    CHECK(close(e.alpha, quartic(2, layers)));
    CHECK(close(e.beta, 1 / quartic(8, layers)));
    CHECK(e.alpha == d.alpha);
    CHECK(e.beta == d.beta);
    // alpha grows and beta shrinks with depth; alpha * beta = (2L)^(1/4) (8L)^(-1/4) = 1/sqrt(2).
    CHECK(std::fabs(e.alpha * e.beta - 1 / std::sqrt(2.0)) <= 4 * kTol);
  }
  const normkit::DeepNormScale huge = normkit::deepnorm_encoder_only(INT_MAX);
  CHECK(close(huge.alpha, quartic(2, INT_MAX)));
  CHECK(close(huge.beta, 1 / quartic(8, INT_MAX)));
}

TEST_CASE("DeepNorm encoder-decoder: 0.81/0.87 (N^4 M)^(+-1/16) and (3M)^(1/4), (12M)^(-1/4)", "[deepnorm]") {
  // Exact values: N = 1, M = 1 -> encoder 0.81 and 0.87; N = 2, M = 16 -> N^4 M = 256, 256^(1/16) = sqrt 2;
  // M = 27 -> decoder alpha = 81^(1/4) = 3, beta = 324^(-1/4) = 1/sqrt 18; M = 12 -> beta = 144^(-1/4) = 1/sqrt 12.
  {
    const auto s = normkit::deepnorm_encoder_decoder(1, 1);
    CHECK(close(s.encoder.alpha, 0.81L));
    CHECK(close(s.encoder.beta, 0.87L));
    CHECK(close(s.decoder.alpha, std::pow(3.0L, 0.25L)));
    CHECK(close(s.decoder.beta, std::pow(12.0L, -0.25L)));
  }
  {
    const auto s = normkit::deepnorm_encoder_decoder(2, 16);
    CHECK(close(s.encoder.alpha, 0.81L * std::sqrt(2.0L)));
    CHECK(close(s.encoder.beta, 0.87L / std::sqrt(2.0L)));
    CHECK(close(s.decoder.alpha, std::sqrt(std::sqrt(48.0L))));
    CHECK(close(s.decoder.beta, 1 / std::sqrt(std::sqrt(192.0L))));
  }
  {
    const auto s = normkit::deepnorm_encoder_decoder(6, 27);
    CHECK(close(s.decoder.alpha, 3.0L));
    CHECK(close(s.decoder.beta, 1 / std::sqrt(18.0L)));
  }
  {
    const auto s = normkit::deepnorm_encoder_decoder(12, 12);  // M = 12: beta = 144^(-1/4)
    CHECK(close(s.decoder.alpha, 6.0L / std::sqrt(6.0L)));     // 36^(1/4) = sqrt 6
    CHECK(close(s.decoder.beta, 1 / std::sqrt(12.0L)));
    CHECK(close(s.encoder.alpha, 0.81L * std::pow(12.0L, 5.0L / 16)));  // (12^5)^(1/16)
  }
  // Against the formula evaluated as written, (N^4 M)^(1/16) in long double, over a grid that includes
  // the paper's configurations (6-6, 18-18, 100-100, 500-500) and unequal depths. N^4 M < 2^64 here,
  // exact in long double.
  const int counts[] = {1, 2, 3, 6, 7, 12, 18, 50, 100, 333, 500, 1000};
  for (int n : counts)
    for (int m : counts) {
      const auto s = normkit::deepnorm_encoder_decoder(n, m);
      const long double n4m = static_cast<long double>(n) * n * n * n * m;
      INFO("N " << n << ", M " << m);
      CHECK(close(s.encoder.alpha, 0.81L * std::pow(n4m, 1.0L / 16)));
      CHECK(close(s.encoder.beta, 0.87L * std::pow(n4m, -1.0L / 16)));
      CHECK(close(s.decoder.alpha, quartic(3, m)));
      CHECK(close(s.decoder.beta, 1 / quartic(12, m)));
    }
  // Extreme counts stay finite and positive.
  const auto s = normkit::deepnorm_encoder_decoder(INT_MAX, INT_MAX);
  CHECK(std::isfinite(s.encoder.alpha));
  CHECK(s.encoder.beta > 0);
  CHECK(close(s.encoder.alpha, 0.81L * std::pow(static_cast<long double>(INT_MAX), 5.0L / 16)));
}

TEST_CASE("DeepNorm: layers < 1 throws std::invalid_argument naming the function and the argument", "[deepnorm]") {
  using Catch::Matchers::Contains;
  for (int bad : {0, -1, INT_MIN}) {
    INFO("layers " << bad);
    CHECK_THROWS_AS(normkit::deepnorm_encoder_only(bad), std::invalid_argument);
    CHECK_THROWS_AS(normkit::deepnorm_decoder_only(bad), std::invalid_argument);
    CHECK_THROWS_AS(normkit::deepnorm_encoder_decoder(bad, 6), std::invalid_argument);
    CHECK_THROWS_AS(normkit::deepnorm_encoder_decoder(6, bad), std::invalid_argument);
    CHECK_THROWS_AS(normkit::deepnorm_encoder_decoder(bad, bad), std::invalid_argument);
    CHECK_THROWS_WITH(normkit::deepnorm_encoder_only(bad),
                      Contains("normkit::deepnorm_encoder_only") &&
                          Contains("layers must be >= 1, got " + std::to_string(bad)));
    CHECK_THROWS_WITH(normkit::deepnorm_decoder_only(bad), Contains("normkit::deepnorm_decoder_only"));
    CHECK_THROWS_WITH(normkit::deepnorm_encoder_decoder(bad, 6), Contains("encoder_layers must be >= 1"));
    CHECK_THROWS_WITH(normkit::deepnorm_encoder_decoder(6, bad), Contains("decoder_layers must be >= 1"));
  }
  CHECK_NOTHROW(normkit::deepnorm_encoder_only(1));
  CHECK_NOTHROW(normkit::deepnorm_encoder_decoder(1, 1));
}
