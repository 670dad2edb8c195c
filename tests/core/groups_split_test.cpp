// Tests for the split halves of core/groups.hpp that SyncBatchNorm uses between its collectives:
//   moments_groups       gives the same bits as forward_groups' own statistics (same chunking and
//                        merge order), serially and in chunks;
//   forward_groups with the statistics given (StatsMode::Given) then gives forward_groups' y;
//   backward_sums_groups and backward_dx_groups with count = the tensor's own equal the fused
//                        backward_groups: bit for bit in the row shape (same sums in the same
//                        order), to rounding in the column shapes (their blocks of rows differ:
//                        2e-6 relative to the channel's sum of |terms| for sums, 1e-5 for dx).
// BatchNorm shapes only (Group affine): NCHW-like runs ([N][C][HW]) and channels-last columns.
#include "support/reverse_executor.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "normkit/core/groups.hpp"

namespace core = normkit::core;
using core::Index;

namespace {

std::size_t sz(Index n) { return static_cast<std::size_t>(n); }

using normkit_test::ReverseExecutor;

std::vector<float> random(std::size_t n, unsigned seed, float mean) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = mean + normal(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  // memcmp must not see the null data() of empty vectors (an empty batch), even for 0 bytes
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

template <class Exec>
void check_shape(const Exec& exec, const core::GroupShape& s) {
  const Index G = s.groups, total = s.outer * s.groups * s.inner;
  const std::vector<float> x = random(sz(total), 1, 3.0f), dy = random(sz(total), 2, 0.1f);
  std::vector<float> w(sz(G)), b(sz(G));
  for (Index g = 0; g < G; ++g) w[sz(g)] = 0.5f + 0.01f * float(g), b[sz(g)] = 0.1f * float(g % 7);
  core::NormParams<float> p;
  p.affine_axis = core::AffineAxis::Group, p.weight = w.data(), p.bias = b.data();
  INFO("outer " << s.outer << ", groups " << G << ", inner " << s.inner << ", threads " << exec.threads());

  // Fused forward: its statistics and y.
  std::vector<float> mean(sz(G)), lo(mean), rstd(mean), var(mean), y(sz(total));
  core::forward_groups<float>(exec, x.data(), y.data(), s, p,
                              core::StatsArrays<float>{mean.data(), lo.data(), rstd.data(), var.data()},
                              core::StatsMode::Compute);
  // The statistics half, finished as forward_groups finishes them.
  std::vector<core::Moments<float>> m(sz(G));
  core::moments_groups<float>(exec, x.data(), s, p, m.data());
  std::vector<float> mean2(mean.size()), lo2(mean.size()), rstd2(mean.size()), y2(y.size());
  for (Index g = 0; g < G; ++g) {
    const core::Moments<float>& mg = m[sz(g)];
    CHECK(mg.count == s.outer * s.inner);
    mean2[sz(g)] = mg.mean, lo2[sz(g)] = mg.mean_lo;
    rstd2[sz(g)] = core::detail::group_rstd(mg, p.eps, true);
  }
  CHECK(same_bits(mean, mean2));
  CHECK(same_bits(lo, lo2));
  CHECK(same_bits(rstd, rstd2));
  core::forward_groups<float>(exec, x.data(), y2.data(), s, p,
                              core::StatsArrays<float>{mean2.data(), lo2.data(), rstd2.data()}, core::StatsMode::Given);
  CHECK(same_bits(y, y2));

  // Backward: fused, and sums then dx.
  const core::StatsArrays<const float> st{mean.data(), lo.data(), rstd.data()};
  std::vector<float> dx(y.size()), dw(sz(G)), db(dw), dx2(y.size()), sum_dy(dw), sum_dy_xhat(dw);
  core::backward_groups<float>(exec, x.data(), dy.data(), dx.data(), s, p, st, core::StatsOrigin::Batch, dw.data(),
                               db.data());
  core::backward_sums_groups<float>(exec, x.data(), dy.data(), s, p, st, sum_dy.data(), sum_dy_xhat.data());
  core::backward_dx_groups<float>(exec, x.data(), dy.data(), dx2.data(), s, p, st, sum_dy.data(), sum_dy_xhat.data(),
                                  s.outer * s.inner);
  if (s.inner > 1) {
    CHECK(same_bits(sum_dy, db));
    CHECK(same_bits(sum_dy_xhat, dw));
    CHECK(same_bits(dx, dx2));
    return;
  }
  std::vector<double> scale(sz(G), 0.0);  // sum over the channel of |dy| (1 + |xhat|)
  for (Index i = 0; i < total; ++i) {
    const std::size_t g = sz(i % G);
    scale[g] += std::abs(dy[sz(i)]) * (1.0 + std::abs((x[sz(i)] - mean[g] - lo[g]) * rstd[g]));
  }
  double worst_sum = 0, worst_dx = 0;
  for (std::size_t g = 0; g < sz(G); ++g)
    worst_sum = std::max(
        {worst_sum, std::abs(sum_dy[g] - db[g]) / scale[g], std::abs(sum_dy_xhat[g] - dw[g]) / scale[g]});
  for (std::size_t i = 0; i < dx.size(); ++i)
    worst_dx = std::max(worst_dx, double(std::abs(dx[i] - dx2[i])) / std::max(1.0f, std::abs(dx[i])));
  CHECK(worst_sum <= 2e-6);
  CHECK(worst_dx <= 1e-5);
}

}  // namespace

TEST_CASE("moments_groups and the backward halves agree with the fused drivers", "[groups]") {
  for (const Index threads : {1, 2, 3}) {
    const ReverseExecutor exec{threads};
    check_shape(exec, {4, 6, 7 * 9});      // NCHW, small
    check_shape(exec, {8, 5, 100 * 100});  // NCHW, chunked
    check_shape(exec, {5 * 49, 6, 1});     // channels-last, few columns
    check_shape(exec, {16 * 4096, 5, 1});  // channels-last, chunked by rows
    check_shape(exec, {200, 1000, 1});     // channels-last, wide: chunked by columns
    check_shape(exec, {0, 4, 10});         // an empty batch (a rank with N = 0)
  }
}
