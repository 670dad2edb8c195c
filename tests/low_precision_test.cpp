// bfloat16 and half storage: every functor forward and backward, with 16-bit or float parameters,
// against float64 references computed from the exact stored values and then correctly rounded to
// the storage type. The claim under test (README "Numerics"): outputs are within one unit in the
// last place (ulp) of the correctly rounded answer.
//
// One ulp is the right bound for a float pipeline that rounds once at the end: the float result
// is within a few float ulps (2^-24 relative) of the exact value, far below half a bf16 ulp (2^-9)
// or half ulp (2^-12), so the final rounding can only go the other way when the exact value lies
// within that float error of a rounding boundary, and then it lands on the neighbour: 1 ulp.
// The exception is an output that is itself the cancellation of larger terms (y = xhat*w + b near
// 0, dx = rstd*(g - mean(g) - xhat*mean(g*xhat)) near 0): its float error is relative to the terms,
// not to the result, however the sum is computed. Those outputs (|exact| < 2^-8 of the sum of the
// absolute values of the terms; under 1% of the outputs with random data, a few % of the parameter
// gradients, which are sums of random terms) are held to one ulp plus the float bound on the terms
// instead, and counted.
//
// NORMKIT_ACCURACY_REPORT=1 prints the measured figures (the README quotes them).
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "support/reference.hpp"
#include "support/row_norm_spec.hpp"

namespace {

using bf16 = Eigen::bfloat16;
using half = Eigen::half;
using nkref::Vec;
using Index = Eigen::Index;

// Storage type T, parameter type P.
template <class T_, class P_>
struct Types {
  using T = T_;
  using P = P_;
};
using Bf16 = Types<bf16, bf16>;
using Bf16Float = Types<bf16, float>;
using Half = Types<half, half>;
using HalfFloat = Types<half, float>;

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, bf16>) return "bfloat16";
  else if constexpr (std::is_same_v<T, half>) return "half";
  else return "float";
}

// Bit patterns in an order where neighbours differ by one ulp (-0 and +0 both map to 0).
template <class T>
using bits_t = std::conditional_t<sizeof(T) == 2, std::uint16_t, std::uint32_t>;
template <class T>
std::int64_t ordered(T v) {
  constexpr bits_t<T> sign = bits_t<T>(1) << (8 * sizeof(T) - 1);
  const auto b = Eigen::numext::bit_cast<bits_t<T>>(v);
  return (b & sign) ? -std::int64_t(b & ~sign) : std::int64_t(b);
}
template <class T>
T from_ordered(std::int64_t k) {
  constexpr bits_t<T> sign = bits_t<T>(1) << (8 * sizeof(T) - 1);
  return Eigen::numext::bit_cast<T>(k >= 0 ? bits_t<T>(k) : bits_t<T>(sign | bits_t<T>(-k)));
}

// The T nearest to `exact` (ties to even): the float rounding of it, or one of its neighbours.
template <class T>
T round_nearest(double exact) {
  const T c = static_cast<T>(static_cast<float>(exact));
  T best = c;
  double best_err = std::abs(static_cast<double>(static_cast<float>(c)) - exact);
  for (int step : {-1, 1}) {
    const T n = from_ordered<T>(ordered(c) + step);
    const double v = static_cast<double>(static_cast<float>(n));
    if (!std::isfinite(v)) continue;
    const double err = std::abs(v - exact);
    if (err < best_err || (err == best_err && (Eigen::numext::bit_cast<bits_t<T>>(n) & 1) == 0))
      best = n, best_err = err;
  }
  return best;
}

// Accuracy of a set of outputs: ulps from the correctly rounded answer, or (for outputs that
// cancel, see the top of the file) the error in units of the float bound on their terms.
struct Accuracy {
  std::int64_t checked = 0, cancelled = 0;
  std::int64_t max_ulps = 0;
  double max_cancelled = 0;  // worst (|got - exact| - 1 ulp) / (2^-24 * scale) over cancelled outputs
  std::string worst;
};

template <class T>
void measure(Accuracy& acc, const Vec& got, const Vec& exact, const Vec& scale, const std::string& what) {
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++acc.checked;
    if (std::abs(exact[i]) < scale[i] / 256) {
      ++acc.cancelled;
      const T rounded = round_nearest<T>(exact[i]);
      const double ulp = std::abs(static_cast<double>(from_ordered<T>(ordered(rounded) + 1)) -
                                  static_cast<double>(rounded));
      const double units = std::max(0.0, std::abs(got[i] - exact[i]) - ulp) /
                           (std::ldexp(1.0, -24) * scale[i] + 1e-300);
      acc.max_cancelled = std::max(acc.max_cancelled, units);
      continue;
    }
    const std::int64_t ulps = std::abs(ordered(static_cast<T>(got[i])) - ordered(round_nearest<T>(exact[i])));
    if (ulps > acc.max_ulps) {
      acc.max_ulps = ulps;
      acc.worst = what + " [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " exact " +
                  std::to_string(exact[i]);
    }
  }
}

// Cancelled outputs: the float pipeline's error is a few float roundings of the terms. 64 units
// leaves room for the sums over up to thousands of values (pairwise in 4-16 lanes) and the
// rounding of the output itself when it is not tiny compared with the terms.
constexpr double kCancelledUnits = 64;

void check(const Accuracy& acc, const std::string& what) {
  INFO(what << ": " << acc.checked << " outputs, max " << acc.max_ulps << " ulp (" << acc.worst << "), "
            << acc.cancelled << " cancelled with max error " << acc.max_cancelled << " float units of the terms");
  CHECK(acc.checked > 0);
  CHECK(acc.max_ulps <= 1);
  CHECK(acc.max_cancelled <= kCancelledUnits);
  CHECK(acc.cancelled * 20 <= acc.checked);  // ordinary data: cancellation is the exception
  if (std::getenv("NORMKIT_ACCURACY_REPORT"))
    std::printf("%-52s %8lld outputs  max %lld ulp  (%lld cancelled, max %.1f float units)\n", what.c_str(),
                static_cast<long long>(acc.checked), static_cast<long long>(acc.max_ulps),
                static_cast<long long>(acc.cancelled), acc.max_cancelled);
}

// Values as stored in T (or P): the references see exactly what the library sees.
template <class T>
Vec stored(const Vec& v) {
  return nkref::round_to<T>(v);
}

Vec abs_vec(const Vec& v) {
  Vec a(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) a[i] = std::abs(v[i]);
  return a;
}

// LayerNorm or RMSNorm over [rows x F], in layout L: forward and backward accuracy.
template <class T, class P, int L, class Norm, class Options>
void row_norm_case(Accuracy& fwd, Accuracy& bwd, Accuracy& params, Index rows, Index F, const Options& o, bool rms,
                   std::uint32_t seed, double offset) {
  Norm norm(F, o);
  const Vec w = stored<P>(nkref::uniform_vec(std::size_t(F), seed + 1, 0.5, 1.5));
  const Vec b = stored<P>(nkref::uniform_vec(std::size_t(F), seed + 2, -1.0, 1.0));
  if (norm.weight().size()) nkref::set_vec1(norm.weight(), w);
  if (norm.bias().size()) nkref::set_vec1(norm.bias(), b);
  const std::size_t n = std::size_t(rows * F);
  const Vec x = stored<T>(nkref::normal_vec(n, seed, offset, 1.0));
  const Vec dy = stored<T>(nkref::normal_vec(n, seed + 3));
  const std::array<Index, 2> dims{rows, F};

  const nkref::RowNormSpec spec = nkref::row_norm_spec(o, rms);
  const auto ref = nkref::row_norm_forward(x, rows, F, spec, w, b);
  const auto run = nkref::run_forward<T, L, L>(norm, dims, x);
  Vec y_scale(n);  // |xhat * w| + |b|
  for (std::size_t i = 0; i < n; ++i)
    y_scale[i] = std::abs(ref.xhat[i]) * (spec.has_weight ? std::abs(w[i % std::size_t(F)]) : 1.0) +
                 (spec.has_bias ? std::abs(b[i % std::size_t(F)]) : 0.0);
  measure<T>(fwd, run.y, ref.y, y_scale, "y");

  const auto gref = nkref::row_norm_backward(x, dy, rows, F, spec, w);
  const auto grun = nkref::run_backward<T, L, L>(norm, dims, x, dy, run.stats);
  measure<T>(bwd, grun.dx, gref.dx, gref.dx_scale, "dx");
  if constexpr (!std::is_same_v<P, float>) {
    if (spec.has_weight) measure<P>(params, nkref::vec1(grun.grads.weight), gref.dw, gref.dw_scale, "dweight");
    if (spec.has_bias) measure<P>(params, nkref::vec1(grun.grads.bias), gref.db, gref.db_scale, "dbias");
  } else {  // float gradients: a float sum of rows terms, each within a few float ulps
    const double tol = 8 * double(rows) * std::ldexp(1.0, -24);
    if (spec.has_weight)
      CHECK(nkref::compare_scaled(nkref::vec1(grun.grads.weight), gref.dw, gref.dw_scale, tol, "dweight").ok);
    if (spec.has_bias)
      CHECK(nkref::compare_scaled(nkref::vec1(grun.grads.bias), gref.db, gref.db_scale, tol, "dbias").ok);
  }
}

template <class Types, class Norm, class Options>
void row_norm_accuracy(const char* name, Options o, bool rms) {
  using T = typename Types::T;
  using P = typename Types::P;
  Accuracy fwd, bwd, params;
  std::uint32_t seed = 100;
  for (const Index F : {7, 100, 768, 4099})
    for (const double offset : {0.0, 3.0}) {
      const Index rows = F < 1000 ? 96 : 24;
      row_norm_case<T, P, Eigen::RowMajor, Norm>(fwd, bwd, params, rows, F, o, rms, seed += 10, offset);
      row_norm_case<T, P, Eigen::ColMajor, Norm>(fwd, bwd, params, rows, F, o, rms, seed += 10, offset);
    }
  const std::string what = std::string(name) + "<" + type_name<T>() + ", " + type_name<P>() + "> ";
  check(fwd, what + "forward y");
  check(bwd, what + "backward dx");
  if (!std::is_same_v<P, float> && o.elementwise_affine) check(params, what + "dweight, dbias");
}

}  // namespace

TEMPLATE_TEST_CASE("LayerNorm on bfloat16/half is within 1 ulp of the correctly rounded float64 answer",
                   "[low_precision][layer_norm]", Bf16, Bf16Float, Half, HalfFloat) {
  using T = typename TestType::T;
  using P = typename TestType::P;
  normkit::LayerNormOptions o;
  SECTION("weight and bias") { row_norm_accuracy<TestType, normkit::LayerNorm<T, P>>("LayerNorm", o, false); }
  SECTION("no affine") {
    o.elementwise_affine = false;
    row_norm_accuracy<TestType, normkit::LayerNorm<T, P>>("LayerNorm(no affine)", o, false);
  }
}

TEMPLATE_TEST_CASE("RMSNorm on bfloat16/half is within 1 ulp of the correctly rounded float64 answer",
                   "[low_precision][rms_norm]", Bf16, Bf16Float, Half, HalfFloat) {
  using T = typename TestType::T;
  using P = typename TestType::P;
  normkit::RMSNormOptions o;
  row_norm_accuracy<TestType, normkit::RMSNorm<T, P>>("RMSNorm", o, true);
}

namespace {

template <class T, class P, int L>
void batch_norm_case(Accuracy& fwd, Accuracy& bwd, Accuracy& eval, Accuracy& params, Accuracy& running,
                     const std::array<Index, 4>& dims, Index axis, std::uint64_t seed) {
  const std::vector<Index> dv(dims.begin(), dims.end());
  const int ax = nkref::normalize_axis(axis, 4);
  const Index C = dims[std::size_t(ax)];
  normkit::BatchNormOptions o;
  o.channel_axis = axis;
  normkit::BatchNorm<T, P> bn(C, o);
  nkref::RefBatchNorm ref(C, o.eps, o.momentum, true, true);
  ref.weight = stored<P>(nkref::uniform_vec(std::size_t(C), seed + 1, 0.5, 1.5));
  ref.bias = stored<P>(nkref::uniform_vec(std::size_t(C), seed + 2, -1.0, 1.0));
  nkref::set_vec1(bn.weight(), ref.weight);
  nkref::set_vec1(bn.bias(), ref.bias);
  const Vec x = stored<T>(nkref::channel_input(dv, ax, seed));
  const Vec dy = stored<T>(nkref::normal_vec(x.size(), std::uint32_t(seed + 3)));

  auto xt = nkref::make_tensor<T, 4, L>(dims, x);
  auto yt = nkref::make_tensor<T, 4, L>(dims, Vec(x.size(), 0.0));
  const normkit::NormStats<T> stats = bn.forward(xt, yt);
  const nkref::RefOutput out = ref.forward(dv, ax, x);
  const nkref::ChannelLayout lay(dv, ax);
  Vec y_scale(x.size()), xhat(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) {
    const auto c = std::size_t(lay.channel_of(Index(k)));
    xhat[k] = (x[k] - out.mean[c]) * out.rstd[c];
    y_scale[k] = std::abs(xhat[k] * ref.weight[c]) + std::abs(ref.bias[c]);
  }
  measure<T>(fwd, nkref::to_rowmajor(yt), out.y, y_scale, "y");

  auto dyt = nkref::make_tensor<T, 4, L>(dims, dy);
  auto dxt = nkref::make_tensor<T, 4, L>(dims, Vec(x.size(), 0.0));
  const normkit::NormGrads<P> grads = bn.backward(xt, dyt, stats, dxt);
  const nkref::RefGrads g = ref.backward(dv, ax, x, dy, out.mean, out.rstd);
  // dx scale per element: rstd * w * (|dy| + mean|dy| + |xhat| mean|dy xhat|).
  Vec dy_xhat(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) dy_xhat[k] = dy[k] * xhat[k];
  const Vec abs_dy = nkref::channel_abs_sums(dv, ax, dy), abs_dyx = nkref::channel_abs_sums(dv, ax, dy_xhat);
  const double n = double(lay.per_channel);
  Vec dx_scale(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) {
    const auto c = std::size_t(lay.channel_of(Index(k)));
    dx_scale[k] = out.rstd[c] * std::abs(ref.weight[c]) *
                  (std::abs(dy[k]) + abs_dy[c] / n + std::abs(xhat[k]) * abs_dyx[c] / n);
  }
  measure<T>(bwd, nkref::to_rowmajor(dxt), g.dx, dx_scale, "dx");
  if constexpr (!std::is_same_v<P, float>) {
    measure<P>(params, nkref::vec1(grads.weight), g.dweight, abs_dyx, "dweight");
    measure<P>(params, nkref::vec1(grads.bias), g.dbias, abs_dy, "dbias");
  } else {
    const double tol = 8 * n * std::ldexp(1.0, -24);
    CHECK(nkref::compare_scaled(nkref::vec1(grads.weight), g.dweight, abs_dyx, tol, "dweight").ok);
    CHECK(nkref::compare_scaled(nkref::vec1(grads.bias), g.dbias, abs_dy, tol, "dbias").ok);
  }
  // Running statistics are stored as P: one rounding of the float64 update, from batch statistics
  // that are within a few float roundings of the data's scale (std ~1 here, so 2^-24 * (|r| + 1)).
  if constexpr (!std::is_same_v<P, float>) {
    measure<P>(running, nkref::vec1(bn.running_mean()), ref.running_mean, abs_vec(ref.running_mean), "running_mean");
    measure<P>(running, nkref::vec1(bn.running_var()), ref.running_var, abs_vec(ref.running_var), "running_var");
  } else {
    const double u = std::ldexp(1.0, -24);
    CHECK(nkref::compare(nkref::vec1(bn.running_mean()), ref.running_mean, 8 * u, 8 * u, "running_mean").ok);
    CHECK(nkref::compare(nkref::vec1(bn.running_var()), ref.running_var, 8 * u, 8 * u, "running_var").ok);
  }

  // Eval with the stored running statistics (as the library sees them: rounded to P).
  bn.eval();
  ref.training = false;
  ref.running_mean = nkref::vec1(bn.running_mean());
  ref.running_var = nkref::vec1(bn.running_var());
  bn.forward(xt, yt);
  const nkref::RefOutput ev = ref.forward(dv, ax, x);
  Vec ev_scale(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) {
    const auto c = std::size_t(lay.channel_of(Index(k)));
    ev_scale[k] = std::abs((x[k] - ev.mean[c]) * ev.rstd[c] * ref.weight[c]) + std::abs(ref.bias[c]);
  }
  measure<T>(eval, nkref::to_rowmajor(yt), ev.y, ev_scale, "eval y");
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm on bfloat16/half is within 1 ulp of the correctly rounded float64 answer",
                   "[low_precision][batch_norm]", Bf16, Bf16Float, Half, HalfFloat) {
  using T = typename TestType::T;
  using P = typename TestType::P;
  Accuracy fwd, bwd, eval, params, running;
  std::uint64_t seed = 7;
  for (const auto& dims : {std::array<Index, 4>{8, 16, 7, 9}, std::array<Index, 4>{4, 40, 5, 5}}) {
    batch_norm_case<T, P, Eigen::RowMajor>(fwd, bwd, eval, params, running, dims, 1, seed += 10);
    batch_norm_case<T, P, Eigen::ColMajor>(fwd, bwd, eval, params, running, dims, 1, seed += 10);
    const std::array<Index, 4> last{dims[0], dims[2], dims[3], dims[1]};
    batch_norm_case<T, P, Eigen::RowMajor>(fwd, bwd, eval, params, running, last, -1, seed += 10);
  }
  const std::string what = std::string("BatchNorm<") + type_name<T>() + ", " + type_name<P>() + "> ";
  check(fwd, what + "train forward y");
  check(bwd, what + "backward dx");
  check(eval, what + "eval forward y");
  if constexpr (!std::is_same_v<P, float>)
    check(running, what + "running stats"), check(params, what + "dweight, dbias");
}

TEMPLATE_TEST_CASE("bfloat16 rows at the edges of float's range normalize like ordinary rows", "[low_precision][range]",
                   Bf16, Bf16Float) {
  using T = typename TestType::T;
  using P = typename TestType::P;
  // bfloat16 has float's exponent range: squares of 1e30 overflow a float sum and squares of 1e-30
  // underflow it, so these take the rescaled path (core/moments.hpp) with float accumulators. With
  // eps = 0 the answer is O(1) however small the row; for rows of subnormals (1e-39, 1e-40) rstd
  // itself (~1e40) is beyond float, the type NormStats holds it in, so those use the default eps.
  for (const double scale : {1e30, 3e37, 1e-30, 1e-37, 1e-39, 1e-40}) {
    const double eps = scale < 1e-38 ? 1e-5 : 0.0;
    CAPTURE(scale, eps);
    const Index rows = 4, F = 300;
    Vec x = nkref::normal_vec(std::size_t(rows * F), 11, 0.5, 1.0);
    for (auto& v : x) v *= scale;
    x = stored<T>(x);
    for (const bool rms : {false, true}) {
      Accuracy acc;
      nkref::RowNormSpec spec;
      spec.rms = rms, spec.eps = eps, spec.has_weight = false, spec.has_bias = false;
      const auto ref = nkref::row_norm_forward(x, rows, F, spec, Vec(), Vec());
      Vec y;
      if (rms) {
        normkit::RMSNorm<T, P> norm(F, normkit::RMSNormOptions{eps, false, false});
        y = nkref::run_forward<T, Eigen::RowMajor, Eigen::RowMajor>(norm, std::array<Index, 2>{rows, F}, x).y;
      } else {
        normkit::LayerNorm<T, P> norm(F, normkit::LayerNormOptions{eps, false, false});
        y = nkref::run_forward<T, Eigen::RowMajor, Eigen::RowMajor>(norm, std::array<Index, 2>{rows, F}, x).y;
      }
      measure<T>(acc, y, ref.y, abs_vec(ref.y), rms ? "RMSNorm y" : "LayerNorm y");
      INFO((rms ? "RMSNorm" : "LayerNorm") << " max " << acc.max_ulps << " ulp: " << acc.worst);
      CHECK(acc.max_ulps <= 1);
      CHECK(acc.cancelled == 0);
    }
  }
}

TEMPLATE_TEST_CASE("A NaN in a bfloat16/half row stays in that row", "[low_precision][nan]", Bf16, Half) {
  using T = typename TestType::T;
  const Index rows = 3, F = 40;
  Vec x = stored<T>(nkref::normal_vec(std::size_t(rows * F), 5));
  x[std::size_t(F + 17)] = std::numeric_limits<double>::quiet_NaN();
  normkit::LayerNorm<T> ln(F);
  const auto run = nkref::run_forward<T, Eigen::RowMajor, Eigen::RowMajor>(ln, std::array<Index, 2>{rows, F}, x);
  for (Index r = 0; r < rows; ++r)
    for (Index j = 0; j < F; ++j) {
      CAPTURE(r, j);
      CHECK(std::isnan(run.y[std::size_t(r * F + j)]) == (r == 1));
    }
}
