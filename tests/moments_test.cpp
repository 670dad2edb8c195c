// tests/moments_test.cpp — the public mergeable moments (normkit/moments.hpp): the moments of a
// block split anywhere and merged equal those of the whole block, to rounding, and an independent
// long double two-pass reference; merging is deterministic (the same blocks merged in the same
// order give the same bits, whichever way the blocks were produced); empty blocks are the identity.
//
// Tolerances: mean relative 4 ulps of A (the (mean, mean_lo) pair carries more than A's digits; its
// sum rounded to A is within an ulp or two of the exact mean), variance relative 64 ulps of A
// (each block's m2 has ~sqrt(n) ulps of summation error, and Chan's correction term adds a few);
// a merge with the wrong weights (n_a n_b / n) or without the mean correction is off by the
// squared spread of the block means, here >= 1e-3 relative.
#include <normkit/moments.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using Index = Eigen::Index;

template <class A>
std::vector<A> data(std::size_t n, double mean, double std, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<A> v(n);
  for (std::size_t i = 0; i < n; ++i)  // a drift along the data, so that the block means differ
    v[i] = static_cast<A>(mean + std * (normal(rng) + 2.0 * static_cast<double>(i) / static_cast<double>(n)));
  return v;
}

template <class A>
void reference(const std::vector<A>& v, long double& mean, long double& var) {
  long double s = 0, q = 0;
  for (const A x : v) s += x;
  mean = s / static_cast<long double>(v.size());
  for (const A x : v) q += (x - mean) * (x - mean);
  var = q / static_cast<long double>(v.size());
}

template <class A>
bool same_bits(const normkit::Moments<A>& a, const normkit::Moments<A>& b) {
  return a.count == b.count && a.exp2 == b.exp2 && std::memcmp(&a.mean, &b.mean, sizeof(A)) == 0 &&
         std::memcmp(&a.mean_lo, &b.mean_lo, sizeof(A)) == 0 && std::memcmp(&a.m2, &b.m2, sizeof(A)) == 0;
}

template <class A>
void check_splits(double mean0) {
  const double eps = std::numeric_limits<A>::epsilon();
  const std::vector<A> v = data<A>(5000, mean0, 1.0, 7);
  long double ref_mean, ref_var;
  reference(v, ref_mean, ref_var);
  const normkit::Moments<A> whole = normkit::moments_of<A>(v.data(), Index(v.size()));
  CHECK(whole.count == Index(v.size()));
  CHECK(std::abs(normkit::mean_of(whole) - double(ref_mean)) <= 4 * eps * std::abs(double(ref_mean)));
  CHECK(std::abs(normkit::variance_of(whole) - double(ref_var)) <= 64 * eps * double(ref_var));

  std::mt19937 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    // Cut points at random (blocks of 0 values included), merged left to right.
    std::vector<Index> cuts{0, Index(v.size())};
    for (int k = 0; k < 1 + trial % 7; ++k) cuts.push_back(Index(rng() % (v.size() + 1)));
    std::sort(cuts.begin(), cuts.end());
    normkit::Moments<A> merged, again;
    std::vector<normkit::Moments<A>> blocks;
    for (std::size_t b = 0; b + 1 < cuts.size(); ++b)
      blocks.push_back(normkit::moments_of<A>(v.data() + cuts[b], cuts[b + 1] - cuts[b]));
    for (const auto& m : blocks) merged = normkit::merge_moments(merged, m);
    for (std::size_t b = 0; b + 1 < cuts.size(); ++b)  // the blocks computed afresh: same bits
      again = normkit::merge_moments(again, normkit::moments_of<A>(v.data() + cuts[b], cuts[b + 1] - cuts[b]));
    INFO("mean " << mean0 << ", " << cuts.size() - 1 << " blocks");
    CHECK(merged.count == whole.count);
    CHECK(same_bits(merged, again));
    CHECK(std::abs(normkit::mean_of(merged) - double(ref_mean)) <= 4 * eps * std::abs(double(ref_mean)));
    CHECK(std::abs(normkit::variance_of(merged) - double(ref_var)) <= 64 * eps * double(ref_var));
    CHECK(std::abs(normkit::variance_of(merged, true) - double(ref_var * v.size() / (v.size() - 1))) <=
          64 * eps * double(ref_var));
  }
}

}  // namespace

TEST_CASE("merged moments of any split equal the whole's (float, double; mean 0 and far from 0)", "[moments]") {
  for (const double mean : {0.0, 1e3, -3e5}) {
    check_splits<float>(mean);
    check_splits<double>(mean);
  }
}

TEST_CASE("empty moments are the identity of merge and have NaN statistics", "[moments]") {
  const std::vector<double> v = data<double>(100, 2.0, 1.0, 9);
  const normkit::Moments<double> m = normkit::moments_of<double>(v.data(), Index(v.size())), empty;
  CHECK(same_bits(normkit::merge_moments(empty, m), m));
  CHECK(same_bits(normkit::merge_moments(m, empty), m));
  CHECK(normkit::moments_of<double>(v.data(), 0).count == 0);
  CHECK(std::isnan(normkit::mean_of(empty)));
  CHECK(std::isnan(normkit::variance_of(empty)));
  const normkit::Moments<double> one = normkit::moments_of<double>(v.data(), 1);
  CHECK(normkit::variance_of(one) == 0.0);
  CHECK(std::isnan(normkit::variance_of(one, true)));
}

TEST_CASE("moments of bfloat16 data accumulate in float", "[moments]") {
  std::vector<Eigen::bfloat16> v;
  std::vector<float> f;
  for (const float x : data<float>(777, 5.0, 0.5, 4)) v.push_back(Eigen::bfloat16(x)), f.push_back(float(v.back()));
  const normkit::Moments<float> a = normkit::moments_of<float>(v.data(), Index(v.size()));
  const normkit::Moments<float> b = normkit::moments_of<float>(f.data(), Index(f.size()));
  CHECK(std::abs(normkit::mean_of(a) - normkit::mean_of(b)) <= 4e-7f * 5.0f);
  CHECK(std::abs(normkit::variance_of(a) - normkit::variance_of(b)) <= 1e-5f * normkit::variance_of(b));
}
