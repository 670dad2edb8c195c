// Tests for core/groups.hpp: one logical problem (G groups of n values) laid out in each of the
// driver's shapes — runs ([1][G][n]), several runs per group ([o][G][n/o]) and columns ([n][G][1]) —
// must give the double-precision answer, forward and backward, serially and in chunks.
#include "support/reverse_executor.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "normkit/core/groups.hpp"
#include "support/index_vector.hpp"

namespace core = normkit::core;
using core::Index;

namespace {

using normkit_test::ReverseExecutor;

struct Problem {
  Index groups, outer, inner;
  Index n() const { return outer * inner; }
  Index at(Index g, Index e) const { return ((e / inner) * groups + g) * inner + e % inner; }  // e = element of group
};

// The double reference for group g, element e: xhat, and dx for the given dy.
struct Reference {
  IndexVector<double> mean, rstd, y, dx, dweight, dbias;
};

Reference reference(const Problem& p, const IndexVector<float>& x, const IndexVector<float>& dy,
                    const IndexVector<float>& w, const IndexVector<float>& b, bool centered, core::AffineAxis axis,
                    double eps) {
  const Index n = p.n(), total = n * p.groups;
  Reference r{IndexVector<double>(p.groups),
              IndexVector<double>(p.groups),
              IndexVector<double>(total),
              IndexVector<double>(total),
              IndexVector<double>(axis == core::AffineAxis::Element ? n : p.groups, 0.0),
              IndexVector<double>(axis == core::AffineAxis::Element ? n : p.groups, 0.0)};
  for (Index g = 0; g < p.groups; ++g) {
    double mean = 0, var = 0;
    if (centered) {
      for (Index e = 0; e < n; ++e) mean += x[p.at(g, e)];
      mean /= double(n);
    }
    for (Index e = 0; e < n; ++e) var += (x[p.at(g, e)] - mean) * (x[p.at(g, e)] - mean);
    var /= double(n);
    const double rstd = 1 / std::sqrt(var + eps);
    r.mean[g] = mean, r.rstd[g] = rstd;
    const auto weight = [&](Index e) { return axis == core::AffineAxis::Element ? double(w[e]) : double(w[g]); };
    const auto bias = [&](Index e) { return axis == core::AffineAxis::Element ? double(b[e]) : double(b[g]); };
    double mg = 0, mgx = 0;
    for (Index e = 0; e < n; ++e) {
      const double xhat = (x[p.at(g, e)] - mean) * rstd, g_ = dy[p.at(g, e)] * weight(e);
      r.y[p.at(g, e)] = xhat * weight(e) + bias(e);
      mg += g_ / double(n), mgx += g_ * xhat / double(n);
      const Index slot = axis == core::AffineAxis::Element ? e : g;
      r.dweight[slot] += dy[p.at(g, e)] * xhat;
      r.dbias[slot] += dy[p.at(g, e)];
    }
    for (Index e = 0; e < n; ++e) {
      const double xhat = (x[p.at(g, e)] - mean) * rstd, g_ = dy[p.at(g, e)] * weight(e);
      r.dx[p.at(g, e)] = rstd * (g_ - (centered ? mg : 0.0) - xhat * mgx);
    }
  }
  return r;
}

template <class Exec>
void check_problem(const Exec& exec, const Problem& p, bool centered, core::AffineAxis axis) {
  const Index n = p.n(), total = n * p.groups, params = axis == core::AffineAxis::Element ? n : p.groups;
  std::mt19937 rng(static_cast<unsigned>(total + p.inner));
  std::normal_distribution<float> d(0.f, 1.f);
  IndexVector<float> x(total), dy(total), w(params), b(params);
  for (Index g = 0; g < p.groups; ++g)
    for (Index e = 0; e < n; ++e) x[p.at(g, e)] = 5.f * float(g) + d(rng);  // each group has its own offset
  for (float& v : dy) v = d(rng);
  for (float& v : w) v = 1.f + 0.5f * d(rng);
  for (float& v : b) v = d(rng);
  const double eps = 1e-5;
  const Reference ref = reference(p, x, dy, w, b, centered, axis, eps);

  const core::GroupShape shape{p.outer, p.groups, p.inner};
  core::NormParams<float> params_;
  params_.centered = centered, params_.eps = eps, params_.affine_axis = axis, params_.weight = w.data(),
  params_.bias = b.data();
  IndexVector<float> y(total), mean(p.groups), mean_lo(p.groups), rstd(p.groups), dx(total), dw(params), db(params);
  core::forward_groups<float>(exec, x.data(), y.data(), shape, params_,
                              core::StatsArrays<float>{mean.data(), mean_lo.data(), rstd.data()},
                              core::StatsMode::Compute);
  for (Index g = 0; g < p.groups; ++g) {
    CHECK(double(mean[g]) + mean_lo[g] == Approx(ref.mean[g]).margin(1e-5 * (1 + std::abs(ref.mean[g]))));
    CHECK(rstd[g] == Approx(ref.rstd[g]).epsilon(1e-5));
  }
  for (Index i = 0; i < total; ++i) REQUIRE(y[i] == Approx(ref.y[i]).margin(2e-5 * (1 + std::abs(ref.y[i]))));

  core::backward_groups<float>(exec, x.data(), dy.data(), dx.data(), shape, params_,
                               core::StatsArrays<const float>{mean.data(), mean_lo.data(), rstd.data()},
                               core::StatsOrigin::Batch, dw.data(), db.data());
  for (Index i = 0; i < total; ++i) REQUIRE(dx[i] == Approx(ref.dx[i]).margin(1e-4 * (1 + std::abs(ref.dx[i]))));
  for (Index k = 0; k < params; ++k) {
    const double scale = std::sqrt(double(axis == core::AffineAxis::Element ? p.groups : n));
    REQUIRE(dw[k] == Approx(ref.dweight[k]).margin(1e-5 * scale * 4));
    REQUIRE(db[k] == Approx(ref.dbias[k]).margin(1e-5 * scale * 4));
  }
  // dx alone (no parameter gradient arrays: they "may be null") is the same dx, bit for bit.
  IndexVector<float> dx_alone(total, -1.f);
  core::backward_groups<float>(exec, x.data(), dy.data(), dx_alone.data(), shape, params_,
                               core::StatsArrays<const float>{mean.data(), mean_lo.data(), rstd.data()},
                               core::StatsOrigin::Batch, static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  REQUIRE(std::memcmp(dx.data(), dx_alone.data(), sizeof(float) * static_cast<std::size_t>(total)) == 0);
}

}  // namespace

TEST_CASE("every shape of the driver gives the double answer", "[core][groups]") {
  for (const bool centered : {true, false}) {
    for (const auto axis : {core::AffineAxis::Element, core::AffineAxis::Group}) {
      INFO("centered " << centered << ", group affine " << (axis == core::AffineAxis::Group));
      for (const Index groups : {Index(1), Index(5), Index(37), Index(70)}) {
        for (const Index n : {Index(1), Index(6), Index(33), Index(300)}) {
          INFO("groups " << groups << ", n " << n);
          check_problem(core::SerialExecutor{}, {groups, 1, n}, centered, axis);                      // runs
          check_problem(core::SerialExecutor{}, {groups, n, 1}, centered, axis);                      // columns
          if (n % 3 == 0) check_problem(core::SerialExecutor{}, {groups, 3, n / 3}, centered, axis);  // NCHW-like
        }
      }
    }
  }
}

TEST_CASE("chunked execution covers every group exactly once", "[core][groups]") {
  // Large enough that chunk_count() gives several chunks (>= 2^16 values each); the third, with
  // few columns, is cut by rows (3 chunks of >= kMinChunkRows rows, their statistics merged).
  for (const auto axis : {core::AffineAxis::Element, core::AffineAxis::Group}) {
    check_problem(ReverseExecutor{3}, {500, 1, 512}, true, axis);
    check_problem(ReverseExecutor{3}, {2000, 256, 1}, true, axis);
    check_problem(ReverseExecutor{3}, {40, 5000, 1}, true, axis);
    check_problem(ReverseExecutor{4}, {64, 8, 600}, true, axis);
  }
}

TEST_CASE("long columns are summed in blocks, staying accurate", "[core][groups]") {
  // 100000 rows in one column: one float accumulator would drift by ~1e-3 relative.
  check_problem(core::SerialExecutor{}, {3, 100000, 1}, true, core::AffineAxis::Group);
}

namespace {

// Long-double mean and population variance of column c of a rows x cols panel.
void column_reference(const IndexVector<float>& x, Index rows, Index cols, Index c, long double& mean,
                      long double& var) {
  long double s = 0, q = 0;
  for (Index r = 0; r < rows; ++r) s += x[r * cols + c];
  mean = s / rows;
  for (Index r = 0; r < rows; ++r) {
    const long double d = x[r * cols + c] - mean;
    q += d * d;
  }
  var = q / rows;
}

}  // namespace

TEST_CASE("column panels: one pass around the first block's mean, the blocked form where it cannot vouch",
          "[core][groups]") {
  // 12 columns, 150000 rows: block_rows = 65536 / 48 = 1365, so the first block is < 1% of a column
  // and the one-pass bound log2(1 + n d^2 / m2) <= log2(1 + rows / block) allows up to 7 bits lost.
  const Index rows = 150000, cols = 12;
  std::mt19937 rng(7);
  std::normal_distribution<float> z(0.f, 1.f);
  IndexVector<float> x(rows * cols);
  const Index first_block = core::detail::panel_block_rows<float>(cols);
  REQUIRE(first_block < rows / 100);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (Index r = 0; r < rows; ++r) {
    float* row = x.data() + r * cols;
    row[0] = z(rng);                                         // ordinary
    row[1] = 1e4f + 1e-2f * z(rng);                          // far offset
    row[2] = r < first_block ? 0.f : 1e3f + 1e-3f * z(rng);  // a step after the first block: poor shift
    row[3] = 0.f;                                            // constant zero (out of range: m2 = 0, mean 0)
    row[4] = 3.25f;                                          // constant
    row[5] = 1e30f * z(rng);                                 // squares overflow
    row[6] = 1e-30f * z(rng);                                // squares underflow
    row[7] = r == 77777 ? nan : z(rng);                      // NaN stays in its column
    row[8] = float(r % 1000) * 1e-3f + z(rng);               // a saw-tooth trend
    row[9] = r == 0 ? 1e6f : z(rng);                         // an outlier in the first block
    row[10] = 5.f + z(rng);
    row[11] = -2.f + 0.5f * z(rng);
  }
  core::Moments<float> one[core::detail::kMaxPanel<float>] = {}, blocked[core::detail::kMaxPanel<float>] = {};
  core::detail::panel_moments(x.data(), rows, cols, cols, true, one);
  core::detail::panel_moments_blocked(x.data(), rows, cols, cols, first_block, true, blocked);
  for (Index c = 0; c < cols; ++c) {
    INFO("column " << c);
    // The blocked form's columns are independent: alone, a column gives the same bits (the one-pass
    // form redoes few failing columns one at a time and relies on it).
    core::Moments<float> alone[1] = {};
    core::detail::panel_moments_blocked(x.data() + c, rows, Index(1), cols, first_block, true, alone);
    REQUIRE(std::memcmp(&alone[0].mean, &blocked[c].mean, sizeof(float)) == 0);
    REQUIRE(std::memcmp(&alone[0].mean_lo, &blocked[c].mean_lo, sizeof(float)) == 0);
    REQUIRE(std::memcmp(&alone[0].m2, &blocked[c].m2, sizeof(float)) == 0);
    REQUIRE(alone[0].exp2 == blocked[c].exp2);
    if (c == 7) {
      REQUIRE(std::isnan(one[c].mean + one[c].mean_lo + one[c].m2));
      continue;
    }
    long double mean = 0, var = 0;
    column_reference(x, rows, cols, c, mean, var);
    for (const auto* m : {&one[c], &blocked[c]}) {
      REQUIRE(m->count == rows);
      const long double got_mean = static_cast<long double>(m->mean) + m->mean_lo;
      const long double got_var = std::ldexp(static_cast<long double>(m->m2) / rows, 2 * m->exp2);
      const long double sd = std::sqrt(var);
      // The mean to 1e-6 of the std (exact for the constant columns: sd = 0).
      REQUIRE(std::abs(got_mean - mean) <= 1e-6L * sd);
      // Ordinary columns: float sums of 1365-row blocks, then of 110 block sums; random rounding
      // errors leave ~sqrt(1475) * 2^-24 = 2e-6 relative at worst (measured <= 3.4e-7). Without the
      // check of the shift, column 2 loses ~7 bits (measured 5.4e-5; the mean is off by 1.6e-6 sd).
      // Column 9 is one 1e6 among N(0,1): its first block adds 1364 terms of ~5e5 to a sum of 1e12,
      // each rounded to 2^-24 of the sum, a bias the bound (block + blocks) * 2^-24 = 8.8e-5 allows.
      const long double tol = c == 9 ? (first_block + rows / first_block + 1) * std::ldexp(1.0L, -24) : 2e-6L;
      REQUIRE(std::abs(got_var - var) <= tol * var);
    }
  }
}

namespace {

// second_pass_shift's definition in library calls: mean0 rounded to a multiple of T's ulp at rms.
template <class T>
float shift_reference(float mean0, float rms) {
  if (!(rms > 0) || !std::isfinite(rms)) return static_cast<float>(static_cast<T>(mean0));
  int e = 0;
  std::frexp(rms, &e);
  const int ulp_exp = e - std::numeric_limits<T>::digits;
  return std::ldexp(std::nearbyint(std::ldexp(mean0, -ulp_exp)), ulp_exp);
}

template <class T>
void check_shift_bits() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> bits;
  std::uniform_real_distribution<float> frac(-1.f, 1.f);
  const auto from_bits = [](std::uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
  };
  for (int i = 0; i < 200000; ++i) {
    // rms anywhere in float's range (subnormals, NaN and Inf included); |mean0| <= rms, as the
    // callers' sums guarantee up to their rounding, and a little beyond it now and then. (Far
    // beyond, mean0 * 2^-ulp_exp overflows float in the definition and not in double.)
    const float rms = std::abs(from_bits(bits(rng)));
    const float mean0 = i % 97 == 0 ? std::numeric_limits<float>::quiet_NaN() : rms * frac(rng) * (i % 16 ? 1.f : 4.f);
    const float got = core::detail::second_pass_shift<T>(mean0, rms), want = shift_reference<T>(mean0, rms);
    INFO("mean0 " << mean0 << ", rms " << rms);
    REQUIRE(std::memcmp(&got, &want, sizeof got) == 0);
  }
}

}  // namespace

TEST_CASE("second_pass_shift on float's bits is the frexp/ldexp definition, bit for bit", "[core][groups]") {
  check_shift_bits<float>();
  check_shift_bits<Eigen::bfloat16>();
  check_shift_bits<Eigen::half>();
}

TEST_CASE("column panels: one dead column is redone alone, the others keep their one pass", "[core][groups]") {
  // 64 channels-last columns, column 5 all zeros: in_range cannot tell it from underflowed squares.
  const Index rows = 3000, cols = 64;
  std::mt19937 rng(5);
  std::normal_distribution<float> z(0.f, 1.f);
  IndexVector<float> x(rows * cols);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) x[r * cols + c] = c == 5 ? 0.f : float(c) + z(rng);
  core::Moments<float> m[core::detail::kMaxPanel<float>] = {};
  core::detail::panel_moments(x.data(), rows, cols, cols, true, m);
  REQUIRE(m[5].count == rows);
  REQUIRE(m[5].mean == 0.f);
  REQUIRE(m[5].mean_lo == 0.f);
  REQUIRE(m[5].m2 == 0.f);
  for (Index c = 0; c < cols; ++c) {
    if (c == 5) continue;
    long double mean = 0, var = 0;
    column_reference(x, rows, cols, c, mean, var);
    INFO("column " << c);
    REQUIRE(std::abs(static_cast<long double>(m[c].mean) + m[c].mean_lo - mean) <= 1e-6L * std::sqrt(var));
    REQUIRE(std::abs(static_cast<long double>(m[c].m2) / rows - var) <= 2e-6L * var);
  }
}
