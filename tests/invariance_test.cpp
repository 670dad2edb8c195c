// tests/invariance_test.cpp — a group's results do not depend on the rest of the tensor (the
// contract's "Invariance"): one row of a LayerNorm/RMSNorm, placed at different positions in batches
// of 1 to 4096 rows of other data, gives the same y, mean, rstd and dx bits every time, on the plain
// call and on pools of 1 to 4 threads; a BatchNorm channel (NCHW) gives the same bits whatever the
// other channels hold and where it sits, on the plain call and on pools of 1 to 4 threads.
// The whole-tensor thread-count and pointer-alignment checks (offsets 1..15 elements, every functor,
// both layouts, channels-last BatchNorm included) are in properties_test (4b, 4c); in place in
// in_place_test.
// Column shapes (ColMajor rows, channels-last channels) are exempt by the contract: a group there may
// depend on which other groups share its panel (the panel's block height follows its width).
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using Eigen::Index;
constexpr int kRow = Eigen::RowMajor;

// mean + spread * N(0,1) as T values.
template <class T>
std::vector<T> random_values(std::size_t n, double mean, double spread, std::uint32_t seed) {
  const nkref::Vec v = nkref::normal_vec(n, seed, mean, spread);
  std::vector<T> out(n);
  std::transform(v.begin(), v.end(), out.begin(), [](double e) { return static_cast<T>(e); });
  return out;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), nkref::same_bits<T>);
}

// The plain call (nullptr) and pools of 1 to 4 threads.
struct Devices {
  std::array<std::unique_ptr<Eigen::ThreadPool>, 4> pools;
  std::array<std::unique_ptr<Eigen::ThreadPoolDevice>, 4> devices;
  std::vector<const Eigen::ThreadPoolDevice*> all{nullptr};
  Devices() {
    for (int n = 1; n <= 4; ++n) {
      const auto i = static_cast<std::size_t>(n - 1);
      pools[i] = std::make_unique<Eigen::ThreadPool>(n);
      devices[i] = std::make_unique<Eigen::ThreadPoolDevice>(pools[i].get(), n);
      all.push_back(devices[i].get());
    }
  }
};

std::string device_name(const Eigen::ThreadPoolDevice* dev) {
  return dev ? std::to_string(dev->numThreads()) + " threads" : "plain call";
}

// What a row (or channel) gives: its outputs and its statistics.
template <class T>
struct GroupResult {
  std::vector<T> y, dx;
  std::vector<normkit::accum_t<T>> stats;  // mean, mean_lo, rstd (those present)
  bool operator==(const GroupResult& o) const {
    return same_bits(y, o.y) && same_bits(dx, o.dx) && same_bits(stats, o.stats);
  }
};

// A (rows, F) batch of random x and dy: the other rows a row is placed among.
template <class T>
struct Batch {
  std::vector<T> x, dy;
};
template <class T>
Batch<T> random_batch(Index rows, Index F, std::uint32_t seed) {
  return {random_values<T>(std::size_t(rows * F), 3.0, 2.0, seed),
          random_values<T>(std::size_t(rows * F), 0.0, 1.0, seed + 1)};
}

// Row `at` of the batch, replaced by `row` (and `drow`), through forward and backward.
template <class T, class Norm>
GroupResult<T> row_in_batch(const Norm& norm, const std::vector<T>& row, const std::vector<T>& drow,
                            const Batch<T>& batch, Index at, const Eigen::ThreadPoolDevice* device) {
  const Index F = static_cast<Index>(row.size()), rows = static_cast<Index>(batch.x.size()) / F;
  std::vector<T> x = batch.x, dy = batch.dy;
  std::copy(row.begin(), row.end(), x.begin() + at * F);
  std::copy(drow.begin(), drow.end(), dy.begin() + at * F);
  Eigen::TensorMap<const Eigen::Tensor<T, 2, kRow>> xm(x.data(), rows, F), dym(dy.data(), rows, F);
  Eigen::Tensor<T, 2, kRow> y(rows, F), dx(rows, F);
  const normkit::NormStats<T> s = device ? norm.forward(*device, xm, y) : norm.forward(xm, y);
  if (device) norm.backward(*device, xm, dym, s, dx);
  else norm.backward(xm, dym, s, dx);
  GroupResult<T> r;
  r.y.assign(y.data() + at * F, y.data() + (at + 1) * F);
  r.dx.assign(dx.data() + at * F, dx.data() + (at + 1) * F);
  for (const auto* t : {&s.mean, &s.mean_lo, &s.rstd})
    if (t->size()) r.stats.push_back((*t)(at));
  return r;
}

template <class T, class Norm>
void row_invariance(const std::string& name, const Norm& norm, Index F) {
  const Devices devices;
  const std::vector<T> row = random_values<T>(std::size_t(F), 1.5, 0.75, 7),
                       drow = random_values<T>(std::size_t(F), 0, 1, 8);
  const GroupResult<T> alone = row_in_batch<T>(norm, row, drow, random_batch<T>(1, F, 1), 0, nullptr);
  // One random batch per size (its generation, not the norm, is what a 4096-row case costs), the
  // row placed at three positions in it.
  std::uint32_t seed = 100;
  for (const Index rows :
       {Index(2), Index(3), Index(4), Index(5), Index(7), Index(8), Index(9), Index(64), Index(333), Index(4096)}) {
    const Batch<T> batch = random_batch<T>(rows, F, seed += 2);
    for (const Index at : {Index(0), rows / 2, rows - 1}) {
      for (const Eigen::ThreadPoolDevice* dev : devices.all) {
        INFO(name << " F " << F << ": row " << at << " of " << rows << ", " << device_name(dev));
        CHECK(row_in_batch<T>(norm, row, drow, batch, at, dev) == alone);
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("A row's y, stats and dx are the same bits in any batch, at any position, on any thread count",
                   "[invariance]", float, double) {
  using T = TestType;
  for (const Index F : {Index(1), Index(7), Index(64), Index(768), Index(1031)}) {
    normkit::LayerNorm<T> ln(F);
    for (Index i = 0; i < F; ++i) ln.weight()(i) = T(1 + 0.01 * double(i % 7)), ln.bias()(i) = T(0.1 * double(i % 3));
    row_invariance<T>("LayerNorm", ln, F);
    normkit::RMSNormOptions o;
    o.eps_placement = normkit::EpsPlacement::OutsideSqrt;
    row_invariance<T>("RMSNorm", normkit::RMSNorm<T>(F, o), F);
  }
}

TEST_CASE("A row's bfloat16 results are the same bits in any batch", "[invariance]") {
  normkit::LayerNorm<Eigen::bfloat16, float> ln(300);
  row_invariance<Eigen::bfloat16>("LayerNorm<bfloat16, float>", ln, 300);
}

TEMPLATE_TEST_CASE(
    "A BatchNorm channel (NCHW) gives the same bits whatever the other channels are, where it sits "
    "and on any thread count",
    "[invariance]", float, double) {
  using T = TestType;
  const Index N = 3, HW = 50;
  const std::vector<T> channel = random_values<T>(std::size_t(N * HW), -2.0, 0.5, 11);
  const std::vector<T> dchannel = random_values<T>(std::size_t(N * HW), 0.0, 1.0, 12);
  // The channel alone (C = 1), then as channel c of C.
  const auto run = [&](Index C, Index c, const Eigen::ThreadPoolDevice* dev, std::uint32_t seed) {
    std::vector<T> x = random_values<T>(std::size_t(N * C * HW), 5.0, 3.0, seed);
    std::vector<T> dy = random_values<T>(std::size_t(N * C * HW), 0.0, 1.0, seed + 1);
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < HW; ++i) {
        x[std::size_t((n * C + c) * HW + i)] = channel[std::size_t(n * HW + i)];
        dy[std::size_t((n * C + c) * HW + i)] = dchannel[std::size_t(n * HW + i)];
      }
    normkit::BatchNorm<T> bn(C);
    Eigen::TensorMap<const Eigen::Tensor<T, 3, kRow>> xm(x.data(), N, C, HW), dym(dy.data(), N, C, HW);
    Eigen::Tensor<T, 3, kRow> y(N, C, HW), dx(N, C, HW);
    const auto s = dev ? bn.forward(*dev, xm, y) : bn.forward(xm, y);
    const auto g = dev ? bn.backward(*dev, xm, dym, s, dx) : bn.backward(xm, dym, s, dx);
    GroupResult<T> r;
    for (Index n = 0; n < N; ++n)
      for (Index i = 0; i < HW; ++i) r.y.push_back(y(n, c, i)), r.dx.push_back(dx(n, c, i));
    r.stats = {s.mean(c),
               s.mean_lo(c),
               s.rstd(c),
               static_cast<normkit::accum_t<T>>(g.weight(c)),
               static_cast<normkit::accum_t<T>>(g.bias(c)),
               static_cast<normkit::accum_t<T>>(bn.running_var()(c))};
    return r;
  };
  const Devices devices;
  const GroupResult<T> alone = run(1, 0, nullptr, 1);
  for (const Index C : {Index(2), Index(5), Index(64)})
    for (const Index c : {Index(0), C / 2, C - 1})
      for (const Eigen::ThreadPoolDevice* dev : devices.all) {
        INFO("channel " << c << " of " << C << ", " << device_name(dev));
        CHECK(run(C, c, dev, std::uint32_t(10 * C + c)) == alone);
      }
}
