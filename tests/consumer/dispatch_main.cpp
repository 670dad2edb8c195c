// Run-time ISA dispatch from a binary built for the x86-64 baseline: every level this CPU can run
// must give LayerNorm's and Softmax's outputs (against float64 references) and say it is the level
// asked for;
// best_level() must be the one given on the command line, if any (scripts/consumer-test.sh runs
// this under qemu-x86_64 as older CPUs). Exits non-zero on any mismatch.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "normkit_consumer/forward_rows.hpp"

namespace {

using normkit::dispatch::Level;

// 64x768, as a transformer's LayerNorm on a short sequence; values spread over a few units so that
// the output's rounding, not the input's, dominates.
constexpr Eigen::Index kRows = 64, kFeatures = 768;

std::vector<double> reference(const std::vector<float>& x, const normkit::LayerNorm<float>& ln) {
  std::vector<double> y(x.size());
  for (Eigen::Index r = 0; r < kRows; ++r) {
    const float* row = x.data() + r * kFeatures;
    double mean = 0, var = 0;
    for (Eigen::Index c = 0; c < kFeatures; ++c) mean += row[c];
    mean /= kFeatures;
    for (Eigen::Index c = 0; c < kFeatures; ++c) var += (row[c] - mean) * (row[c] - mean);
    const double rstd = 1 / std::sqrt(var / kFeatures + 1e-5);
    for (Eigen::Index c = 0; c < kFeatures; ++c)
      y[r * kFeatures + c] = (row[c] - mean) * rstd * ln.weight()(c) + ln.bias()(c);
  }
  return y;
}

// Softmax of each row in float64.
std::vector<double> softmax_reference(const std::vector<float>& x) {
  std::vector<double> y(x.size());
  for (Eigen::Index r = 0; r < kRows; ++r) {
    const float* row = x.data() + r * kFeatures;
    double max = row[0], sum = 0;
    // not std::fmax: aarch64-linux-gnu-g++ 12 -O2 stops with an internal compiler error
    // (vect_transform_reduction) on that reduction of floats into a double
    for (Eigen::Index c = 0; c < kFeatures; ++c) max = row[c] > max ? row[c] : max;
    for (Eigen::Index c = 0; c < kFeatures; ++c) sum += std::exp(row[c] - max);
    for (Eigen::Index c = 0; c < kFeatures; ++c) y[r * kFeatures + c] = std::exp(row[c] - max) / sum;
  }
  return y;
}

// Softmax at `level`, in units of the float64 answer's float ulp: the contract's bound is 2 ulp.
bool run_softmax(Level level, const std::vector<float>& x, const std::vector<double>& expected) {
  std::vector<float> y(x.size());
  const Level ran = normkit::dispatch::pick(NORMKIT_ISA_VARIANTS(softmax_rows), level)(x.data(), y.data(), kRows,
                                                                                       kFeatures);
  double worst = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const float e = static_cast<float>(expected[i]);
    const double ulp = static_cast<double>(std::nextafter(e, 1.0f) - e);
    const double err = std::fabs(y[i] - expected[i]) / ulp;
    if (!(err <= worst)) worst = err;
  }
  const bool ok = ran == level && worst <= 2.0;
  std::printf("normkit_consumer_dispatch: %-9s ran as %-9s softmax within %.2f ulp of float64 %s\n",
              normkit::dispatch::level_name(level), normkit::dispatch::level_name(ran), worst, ok ? "OK" : "MISMATCH");
  return ok;
}

bool run_level(Level level, const normkit::LayerNorm<float>& ln, const std::vector<float>& x,
               const std::vector<double>& expected) {
  std::vector<float> y(x.size());
  const Level ran = normkit::dispatch::pick(NORMKIT_ISA_VARIANTS(layer_norm_rows), level)(ln, x.data(), y.data(),
                                                                                          kRows);
  double worst = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double err = std::fabs(y[i] - expected[i]);
    if (!(err <= worst)) worst = err;  // a NaN output becomes the worst (fmax would skip it)
  }
  // |y| < 8 here: float rounding of the output and of the float accumulations stays below 1e-5.
  const bool ok = ran == level && worst <= 1e-5;
  std::printf("normkit_consumer_dispatch: %-9s ran as %-9s max |y - float64| = %.2e %s\n",
              normkit::dispatch::level_name(level), normkit::dispatch::level_name(ran), worst, ok ? "OK" : "MISMATCH");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const Level best = normkit::dispatch::best_level();
  std::printf("normkit_consumer_dispatch: best level on this CPU: %s\n", normkit::dispatch::level_name(best));
  if (argc > 1 && std::strcmp(argv[1], normkit::dispatch::level_name(best)) != 0) {
    std::fprintf(stderr, "normkit_consumer_dispatch: expected best level %s\n", argv[1]);
    return 1;
  }
  normkit::LayerNorm<float> ln(kFeatures);
  std::vector<float> x(kRows * kFeatures);
  for (Eigen::Index i = 0; i < kFeatures; ++i) {
    ln.weight()(i) = 0.5f + static_cast<float>(i % 7) * 0.25f;
    ln.bias()(i) = static_cast<float>(i % 5) * 0.1f - 0.2f;
  }
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 1009) * 0.01f - 5.0f;
  const std::vector<double> expected = reference(x, ln), expected_softmax = softmax_reference(x);

  bool ok = true;
#if defined(__x86_64__)
  for (Level level : {Level::x86_64, Level::v2, Level::v3, Level::v4})
    if (level <= best) ok = run_level(level, ln, x, expected) && run_softmax(level, x, expected_softmax) && ok;
#else
  ok = run_level(Level::base, ln, x, expected) && run_softmax(Level::base, x, expected_softmax);
#endif
  return ok ? 0 : 1;
}
