// worked_examples — the documents' worked examples (CONTRACT.md, "Worked examples"), computed by
// normkit and printed beside the numbers the documents give.
//
// The "document" column is the only hard-coded data; every other number comes out of normkit's
// forward pass. RMSNorm and LayerNorm run with both eps placements (eps is far too small to show at
// four decimals); BatchNorm has one placement (inside the sqrt, as PyTorch). The program exits with
// status 1 when any value differs from the document's by more than 5e-5 (the documents round to 4
// decimals, so a correct result is within 5e-5 of them).
#include <normkit/normkit.hpp>

#include <cmath>
#include <cstdio>
#include <exception>
#include <optional>
#include <vector>

namespace {

using normkit::EpsPlacement;
constexpr double kTolerance = 5e-5;
int g_values = 0;     // values compared
int g_differing = 0;  // values further than kTolerance from the document

// One line of a table: a quantity, the document's number, normkit's with eps inside and outside the sqrt.
void row(const char* what, double document, std::optional<double> inside, std::optional<double> outside) {
  std::printf("  %-13s %10.4f", what, document);
  bool ok = true;
  for (std::optional<double> got : {inside, outside}) {
    if (!got) {
      std::printf("  %12s", "-");
      continue;
    }
    std::printf("  %12.6f", *got);
    ++g_values;
    if (!(std::abs(*got - document) <= kTolerance)) {
      ok = false;
      ++g_differing;
    }
  }
  std::printf("  %s\n", ok ? "ok" : "<-- DIFFERS");
}

void header(const char* title) {
  std::printf("\n%s\n  %-13s %10s  %12s  %12s\n", title, "quantity", "document", "InsideSqrt", "OutsideSqrt");
}

// The variance (mean(x^2) for RMSNorm) that produced rstd, undoing the eps placement:
//   InsideSqrt : rstd = 1 / sqrt(var + eps)  ->  var = 1/rstd^2 - eps
//   OutsideSqrt: rstd = 1 / (sqrt(var) + eps) ->  var = (1/rstd - eps)^2
double variance_from_rstd(double rstd, double eps, EpsPlacement placement) {
  if (placement == EpsPlacement::InsideSqrt) return 1.0 / (rstd * rstd) - eps;
  const double sigma = 1.0 / rstd - eps;
  return sigma * sigma;
}

// ---------------------------------------------------------------------------------------------
// 1. RMSNorm, x = [3, -3, 6], weight 2, bias -1, eps 1e-6.   Returns {RMS, y0, y1, y2}.
std::vector<double> rmsnorm_example(EpsPlacement placement) {
  normkit::RMSNormOptions options;
  options.eps = 1e-6;
  options.bias = true;  // the document's example has a bias; RMSNorm's default has none
  options.eps_placement = placement;
  normkit::RMSNorm<float> norm(3, options);
  norm.weight().setConstant(2.0f);
  norm.bias().setConstant(-1.0f);

  Eigen::Tensor<float, 1> x(3), y(3);
  x.setValues({3.0f, -3.0f, 6.0f});
  const normkit::NormStats<float> stats = norm.forward(x, y);

  const double rms = std::sqrt(variance_from_rstd(stats.rstd(0), options.eps, placement));
  return {rms, y(0), y(1), y(2)};
}

// ---------------------------------------------------------------------------------------------
// 2. LayerNorm, X = [[5, 10, 15], [-5, -10, -15]], weight 2, bias 1, eps 1e-5.
//    Returns {mu0, mu1, var0, var1, sigma0, sigma1, Y00, Y01, Y02, Y10, Y11, Y12}.
std::vector<double> layernorm_example(EpsPlacement placement) {
  normkit::LayerNormOptions options;
  options.eps = 1e-5;
  options.eps_placement = placement;
  normkit::LayerNorm<float> norm(3, options);
  norm.weight().setConstant(2.0f);
  norm.bias().setConstant(1.0f);

  Eigen::Tensor<float, 2, Eigen::RowMajor> x(2, 3), y(2, 3);
  x.setValues({{5.0f, 10.0f, 15.0f}, {-5.0f, -10.0f, -15.0f}});
  const normkit::NormStats<float> stats = norm.forward(x, y);

  std::vector<double> out{stats.mean(0), stats.mean(1)};
  const double var0 = variance_from_rstd(stats.rstd(0), options.eps, placement);
  const double var1 = variance_from_rstd(stats.rstd(1), options.eps, placement);
  out.insert(out.end(), {var0, var1, std::sqrt(var0), std::sqrt(var1)});
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) out.push_back(y(i, j));
  return out;
}

// ---------------------------------------------------------------------------------------------
// 3. BatchNorm(2 features, weight 2, bias 1, eps 1e-5) in training mode on X^T (3 samples x 2 features):
//    the statistics of each feature are taken over the 3 samples, so the output is Y^T.
//    Returns {mean0, mean1, var0, var1, Yt00, Yt01, Yt10, Yt11, Yt20, Yt21, running_mean0, running_mean1,
//    running_var0, running_var1}.
std::vector<double> batchnorm_example() {
  normkit::BatchNormOptions options;
  options.eps = 1e-5;
  normkit::BatchNorm<float> norm(2, options);  // starts in training mode, momentum 0.1
  norm.weight().setConstant(2.0f);
  norm.bias().setConstant(1.0f);

  Eigen::Tensor<float, 2, Eigen::RowMajor> xt(3, 2), yt(3, 2);
  xt.setValues({{5.0f, -5.0f}, {10.0f, -10.0f}, {15.0f, -15.0f}});
  const normkit::NormStats<float> stats = norm.forward(xt, yt);

  std::vector<double> out{stats.mean(0), stats.mean(1),
                          variance_from_rstd(stats.rstd(0), options.eps, EpsPlacement::InsideSqrt),
                          variance_from_rstd(stats.rstd(1), options.eps, EpsPlacement::InsideSqrt)};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 2; ++j) out.push_back(yt(i, j));
  out.insert(out.end(), {norm.running_mean()(0), norm.running_mean()(1), norm.running_var()(0), norm.running_var()(1)});
  return out;
}

}  // namespace

int main() {
  try {
    std::printf("normkit worked examples (CONTRACT.md \"Worked examples\"), float; tolerance %.0e\n", kTolerance);

    // 1. RMSNorm
    const std::vector<double> r_in = rmsnorm_example(EpsPlacement::InsideSqrt);
    const std::vector<double> r_out = rmsnorm_example(EpsPlacement::OutsideSqrt);
    header("1. RMSNorm  x = [3, -3, 6], weight 2, bias -1, eps 1e-6");
    const double r_doc[] = {4.2426, 0.4142, -2.4142, 1.8284};
    const char* r_names[] = {"RMS", "y[0]", "y[1]", "y[2]"};
    for (std::size_t k = 0; k < 4; ++k) row(r_names[k], r_doc[k], r_in[k], r_out[k]);

    // 2. LayerNorm
    const std::vector<double> l_in = layernorm_example(EpsPlacement::InsideSqrt);
    const std::vector<double> l_out = layernorm_example(EpsPlacement::OutsideSqrt);
    header("2. LayerNorm  X = [[5, 10, 15], [-5, -10, -15]], weight 2, bias 1, eps 1e-5");
    const double l_doc[] = {10, -10, 16.6667, 16.6667, 4.0825, 4.0825, -1.4495, 1, 3.4495, 3.4495, 1, -1.4495};
    const char* l_names[] = {"mu[0]",   "mu[1]",   "var[0]",  "var[1]",  "sigma[0]", "sigma[1]",
                             "Y[0][0]", "Y[0][1]", "Y[0][2]", "Y[1][0]", "Y[1][1]",  "Y[1][2]"};
    for (std::size_t k = 0; k < 12; ++k) row(l_names[k], l_doc[k], l_in[k], l_out[k]);

    // 3. BatchNorm (training)
    const std::vector<double> b = batchnorm_example();
    header("3. BatchNorm (training) on X^T = [[5, -5], [10, -10], [15, -15]], weight 2, bias 1, eps 1e-5");
    const double b_doc[] = {10, -10, 16.6667, 16.6667, -1.4495, 3.4495, 1, 1, 3.4495, -1.4495};
    const char* b_names[] = {"mean[0]",   "mean[1]",   "var[0]",    "var[1]",    "Y^T[0][0]",
                             "Y^T[0][1]", "Y^T[1][0]", "Y^T[1][1]", "Y^T[2][0]", "Y^T[2][1]"};
    for (std::size_t k = 0; k < 10; ++k) row(b_names[k], b_doc[k], b[k], std::nullopt);
    // Not in the documents: the running statistics after this one step, by the contract's (PyTorch's)
    // rule from the document's batch statistics: running = 0.9 * initial + 0.1 * batch, with the
    // unbiased variance var * n / (n - 1), n = 3, initial mean 0 and var 1.
    const double mu_doc[] = {10, -10};
    const double var_doc = 16.6667;
    row("run_mean[0]", 0.1 * mu_doc[0], b[10], std::nullopt);
    row("run_mean[1]", 0.1 * mu_doc[1], b[11], std::nullopt);
    row("run_var[0]", 0.9 + 0.1 * var_doc * 3.0 / 2.0, b[12], std::nullopt);
    row("run_var[1]", 0.9 + 0.1 * var_doc * 3.0 / 2.0, b[13], std::nullopt);
    std::printf(
        "  (BatchNorm has no eps placement option: eps is inside the sqrt; run_* rows: the contract's\n"
        "   momentum-0.1 update applied to the document's statistics, not a document number)\n");

    if (g_differing > 0) {
      std::printf("\nFAILED: %d of %d values differ from the documents by more than %.0e\n", g_differing, g_values,
                  kTolerance);
      return 1;
    }
    std::printf("\nall %d values agree with the documents to %.0e\n", g_values, kTolerance);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "worked_examples: unexpected exception: %s\n", e.what());
    return 1;
  }
}
