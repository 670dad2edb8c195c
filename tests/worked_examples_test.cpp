// The worked examples of CONTRACT.md (taken from the seed documents), to 4 decimals, in float and double,
// RowMajor and ColMajor, and — for LayerNorm and RMSNorm — with both eps placements.
//
// "To 4 decimals" is checked as |got - printed| <= 5e-5 (the printed value is the exact one rounded to
// 4 places, so the exact value lies within 5e-5 of it) plus 2e-6 for float rounding of O(1) results.
// These are the only hard-coded outputs in the tests; the numbers below are the documents' own.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <array>
#include <cmath>

using Eigen::Index;
using normkit::EpsPlacement;

namespace {

constexpr double k4dp = 5e-5 + 2e-6;

template <class TT>
double at(const TT& t, Index i, Index j) {
  return static_cast<double>(t(i, j));
}

const char* placement_name(EpsPlacement p) { return p == EpsPlacement::InsideSqrt ? "InsideSqrt" : "OutsideSqrt"; }

template <class T, int Layout>
void rms_example(EpsPlacement p) {
  INFO("RMSNorm example, " << (sizeof(T) == 4 ? "float" : "double") << ", "
                           << (Layout == Eigen::RowMajor ? "RowMajor" : "ColMajor") << ", " << placement_name(p));
  normkit::RMSNormOptions o;
  o.eps = 1e-6;
  o.bias = true;
  o.eps_placement = p;
  normkit::RMSNorm<T> rms(3, o);
  rms.weight().setConstant(T(2));
  rms.bias().setConstant(T(-1));
  Eigen::Tensor<T, 2, Layout> x(1, 3), y(1, 3);
  x(0, 0) = T(3);
  x(0, 1) = T(-3);
  x(0, 2) = T(6);
  y.setConstant(T(0));
  const auto stats = rms.forward(x, y);
  CHECK(std::fabs(at(y, 0, 0) - 0.4142) <= k4dp);
  CHECK(std::fabs(at(y, 0, 1) - (-2.4142)) <= k4dp);
  CHECK(std::fabs(at(y, 0, 2) - 1.8284) <= k4dp);
  REQUIRE(stats.rstd.size() == 1);
  CHECK(std::fabs(1.0 / static_cast<double>(stats.rstd(0)) - 4.2426) <= k4dp);  // RMS = sqrt(18)
  CHECK(stats.mean.size() == 0);

  // The same example as a rank-1 tensor through operator().
  Eigen::Tensor<T, 1, Layout> x1(3);
  x1(0) = T(3);
  x1(1) = T(-3);
  x1(2) = T(6);
  const auto y1 = rms(x1);
  CHECK(std::fabs(static_cast<double>(y1(0)) - 0.4142) <= k4dp);
  CHECK(std::fabs(static_cast<double>(y1(1)) - (-2.4142)) <= k4dp);
  CHECK(std::fabs(static_cast<double>(y1(2)) - 1.8284) <= k4dp);
}

template <class T, int Layout>
void layer_norm_example(EpsPlacement p) {
  INFO("LayerNorm example, " << (sizeof(T) == 4 ? "float" : "double") << ", "
                             << (Layout == Eigen::RowMajor ? "RowMajor" : "ColMajor") << ", " << placement_name(p));
  normkit::LayerNormOptions o;
  o.eps = 1e-5;
  o.eps_placement = p;
  normkit::LayerNorm<T> ln(3, o);
  ln.weight().setConstant(T(2));
  ln.bias().setConstant(T(1));
  Eigen::Tensor<T, 2, Layout> x(2, 3), y(2, 3);
  const double X[2][3] = {{5, 10, 15}, {-5, -10, -15}};
  const double Y[2][3] = {{-1.4495, 1, 3.4495}, {3.4495, 1, -1.4495}};
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j) x(i, j) = static_cast<T>(X[i][j]);
  y.setConstant(T(0));
  const auto stats = ln.forward(x, y);
  for (Index i = 0; i < 2; ++i)
    for (Index j = 0; j < 3; ++j) {
      INFO("Y(" << i << ", " << j << ") = " << at(y, i, j));
      CHECK(std::fabs(at(y, i, j) - Y[i][j]) <= k4dp);
    }
  // The document's rounding to 2 decimals
  CHECK(std::round(at(y, 0, 0) * 100) / 100 == Approx(-1.45));
  CHECK(std::round(at(y, 0, 2) * 100) / 100 == Approx(3.45));
  REQUIRE(stats.mean.size() == 2);
  REQUIRE(stats.rstd.size() == 2);
  CHECK(std::fabs(static_cast<double>(stats.mean(0)) - 10) <= k4dp);
  CHECK(std::fabs(static_cast<double>(stats.mean(1)) - (-10)) <= k4dp);
  for (Index r = 0; r < 2; ++r) {
    const double rstd = static_cast<double>(stats.rstd(r));
    CHECK(std::fabs(1.0 / rstd - 4.0825) <= k4dp);  // sigma
    // var = 16.6667: recover it from rstd with the placement's formula
    const double var = p == EpsPlacement::InsideSqrt ? 1.0 / (rstd * rstd) - 1e-5 : std::pow(1.0 / rstd - 1e-5, 2);
    CHECK(std::fabs(var - 16.6667) <= 5e-5 + 2e-5);  // float: 16.67 * 6e-8 * a few
  }
}

template <class T, int Layout>
void batch_norm_example() {
  INFO("BatchNorm example, " << (sizeof(T) == 4 ? "float" : "double") << ", "
                             << (Layout == Eigen::RowMajor ? "RowMajor" : "ColMajor"));
  normkit::BatchNormOptions o;
  o.eps = 1e-5;
  normkit::BatchNorm<T> bn(2, o);
  REQUIRE(bn.training());
  bn.weight().setConstant(T(2));
  bn.bias().setConstant(T(1));
  // X^T: 3 samples (the batch axis N) x 2 features (C)
  Eigen::Tensor<T, 2, Layout> x(3, 2), y(3, 2);
  const double X[2][3] = {{5, 10, 15}, {-5, -10, -15}};
  const double Y[2][3] = {{-1.4495, 1, 3.4495}, {3.4495, 1, -1.4495}};
  for (Index c = 0; c < 2; ++c)
    for (Index n = 0; n < 3; ++n) x(n, c) = static_cast<T>(X[c][n]);
  y.setConstant(T(0));
  const auto stats = bn.forward(x, y);
  for (Index c = 0; c < 2; ++c)
    for (Index n = 0; n < 3; ++n) {
      INFO("Y^T(" << n << ", " << c << ") = " << at(y, n, c));
      CHECK(std::fabs(at(y, n, c) - Y[c][n]) <= k4dp);
    }
  REQUIRE(stats.mean.size() == 2);
  REQUIRE(stats.rstd.size() == 2);
  CHECK(std::fabs(static_cast<double>(stats.mean(0)) - 10) <= k4dp);
  CHECK(std::fabs(static_cast<double>(stats.mean(1)) - (-10)) <= k4dp);
  CHECK(std::fabs(1.0 / static_cast<double>(stats.rstd(0)) - 4.0825) <= k4dp);
  CHECK(std::fabs(1.0 / static_cast<double>(stats.rstd(1)) - 4.0825) <= k4dp);
  // One training step with momentum 0.1 from running (0, 1): mean 0.1 * [10, -10]; var 0.9 + 0.1 * 25
  // (the unbiased batch variance is 50 / 2 = 25).
  CHECK(bn.num_batches_tracked() == 1);
  CHECK(static_cast<double>(bn.running_mean()(0)) == Approx(1.0).epsilon(1e-6));
  CHECK(static_cast<double>(bn.running_mean()(1)) == Approx(-1.0).epsilon(1e-6));
  CHECK(static_cast<double>(bn.running_var()(0)) == Approx(3.4).epsilon(1e-6));
  CHECK(static_cast<double>(bn.running_var()(1)) == Approx(3.4).epsilon(1e-6));
}

}  // namespace

TEST_CASE("Worked example 1: RMSNorm of [3, -3, 6], weight 2, bias -1, eps 1e-6", "[worked]") {
  for (EpsPlacement p : {EpsPlacement::InsideSqrt, EpsPlacement::OutsideSqrt}) {
    rms_example<float, Eigen::RowMajor>(p);
    rms_example<float, Eigen::ColMajor>(p);
    rms_example<double, Eigen::RowMajor>(p);
    rms_example<double, Eigen::ColMajor>(p);
  }
}

TEST_CASE("Worked example 2: LayerNorm of [[5, 10, 15], [-5, -10, -15]], weight 2, bias 1, eps 1e-5", "[worked]") {
  for (EpsPlacement p : {EpsPlacement::InsideSqrt, EpsPlacement::OutsideSqrt}) {
    layer_norm_example<float, Eigen::RowMajor>(p);
    layer_norm_example<float, Eigen::ColMajor>(p);
    layer_norm_example<double, Eigen::RowMajor>(p);
    layer_norm_example<double, Eigen::ColMajor>(p);
  }
}

TEST_CASE("Worked example 3: BatchNorm training on X^T gives Y^T", "[worked]") {
  batch_norm_example<float, Eigen::RowMajor>();
  batch_norm_example<float, Eigen::ColMajor>();
  batch_norm_example<double, Eigen::RowMajor>();
  batch_norm_example<double, Eigen::ColMajor>();
}

TEST_CASE("Worked examples agree with the float64 reference", "[worked]") {
  // Ties the documents' numbers to the reference the other tests use (so both are checked at once).
  nkref::RowNormSpec s;
  s.eps = 1e-5;
  const auto ln = nkref::row_norm_forward({5, 10, 15, -5, -10, -15}, 2, 3, s, {2, 2, 2}, {1, 1, 1});
  const double Y[6] = {-1.4495, 1, 3.4495, 3.4495, 1, -1.4495};
  for (int i = 0; i < 6; ++i) CHECK(std::fabs(ln.y[static_cast<std::size_t>(i)] - Y[i]) <= 5e-5);
  CHECK(ln.var[0] == Approx(50.0 / 3.0));
  s.rms = true;
  s.eps = 1e-6;
  s.outside = true;
  const auto rms = nkref::row_norm_forward({3, -3, 6}, 1, 3, s, {2, 2, 2}, {-1, -1, -1});
  CHECK(std::fabs(rms.y[0] - 0.4142) <= 5e-5);
  CHECK(std::fabs(rms.y[1] - (-2.4142)) <= 5e-5);
  CHECK(std::fabs(rms.y[2] - 1.8284) <= 5e-5);
}
