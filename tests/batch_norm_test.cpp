// tests/batch_norm_test.cpp — BatchNorm against an independent float64 model of PyTorch's BatchNorm
// (nkref::RefBatchNorm, tests/support/reference.hpp): every option, both layouts, Tensor and TensorMap, float
// and double, running statistics, backward (finite differences and analytic reference), thread
// pools, non-finite values, and the contract's worked example 3.
//
// Tolerances (relative, with an absolute floor of 1, see nkref::max_rel_diff):
//   double: 1e-11 for values (a float64 computation of the same formulas differs by rounding only,
//           ~1e-15 per operation and ~sqrt(n) * 1e-16 per sum);
//   float : 1e-4  for values (the library accumulates in float: means/variances over up to 1568
//           values per channel carry ~sqrt(n) * 6e-8 relative error, amplified by |mean|/std <= ~12
//           in this data; a wrong formula — biased vs unbiased, eps placement, a channel mix-up —
//           is off by far more, e.g. n/(n-1) at n = 1568 is 6e-4 in the variance);
//   sums in backward (dweight, dbias) are compared relative to the channel's sum of |terms|, the
//           natural scale of their rounding error.
//   finite differences (double, central, h = 1e-5): truncation ~h^2 and cancellation ~1e-16/h give
//           ~1e-10; checked to 1e-6 relative (floor 1).
//   thread pools: results may differ from one thread by summation order only: 1e-12 (double),
//           2e-5 (float).
#include <normkit/normkit.hpp>

#include "support/reference.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using nkref::Index;
using nkref::max_rel_diff;
using nkref::RefBatchNorm;
using nkref::Vec;
using normkit::BatchNorm;
using normkit::BatchNormOptions;

constexpr int kRow = Eigen::RowMajor;
constexpr int kCol = Eigen::ColMajor;

template <class T>
constexpr double tol() {
  return std::is_same_v<T, double> ? 1e-11 : 1e-4;
}
template <class T>
constexpr double thread_tol() {
  return std::is_same_v<T, double> ? 1e-12 : 2e-5;
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, double> ? "double" : "float";
}

inline std::string layout_name(int L) { return L == kRow ? "RowMajor" : "ColMajor"; }

template <std::size_t R>
std::string dims_str(const std::array<Index, R>& d) {
  std::string s = "(";
  for (std::size_t i = 0; i < R; ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + ")";
}

inline std::string opt_str(const BatchNormOptions& o) {
  std::string s = "eps=" + std::to_string(o.eps) +
                  " momentum=" + (o.momentum ? std::to_string(*o.momentum) : "cumulative") +
                  " affine=" + std::to_string(o.affine) + " track=" + std::to_string(o.track_running_stats) +
                  " channel_axis=" + std::to_string(o.channel_axis);
  return s;
}

enum class Kind { Tensor, Map };

template <class T>
struct Fwd {
  Vec y;
  normkit::NormStats<T> stats;
};

template <class T>
struct Bwd {
  Vec dx;
  normkit::NormGrads<T> grads;
};

// forward through an Eigen::Tensor (x layout LX, y layout LY) or through TensorMaps over std::vectors
// (a const map for x and a temporary map for y).
template <class T, int R, int LX, int LY = LX>
Fwd<T> run_forward(BatchNorm<T>& bn, const std::array<Index, static_cast<std::size_t>(R)>& dims, const Vec& x,
                   Kind kind = Kind::Tensor) {
  Fwd<T> r;
  if (kind == Kind::Tensor) {
    auto xt = nkref::make_tensor<T, R, LX>(dims, x);
    auto yt = nkref::filled_tensor<T, R, LY>(dims, T(-777));
    r.stats = bn.forward(xt, yt);
    r.y = nkref::to_rowmajor(yt);
  } else {
    std::vector<T> xs(x.size()), ys(x.size(), T(-777));
    nkref::from_rowmajor(x, Eigen::TensorMap<Eigen::Tensor<T, R, LX>>(xs.data(), dims));
    Eigen::TensorMap<const Eigen::Tensor<T, R, LX>> xm(xs.data(), dims);
    r.stats = bn.forward(xm, Eigen::TensorMap<Eigen::Tensor<T, R, LY>>(ys.data(), dims));
    r.y = nkref::to_rowmajor(Eigen::TensorMap<const Eigen::Tensor<T, R, LY>>(ys.data(), dims));
  }
  return r;
}

template <class T, int R, int L>
Bwd<T> run_backward(const BatchNorm<T>& bn, const std::array<Index, static_cast<std::size_t>(R)>& dims, const Vec& x,
                    const Vec& dy, const normkit::NormStats<T>& stats, Kind kind = Kind::Tensor) {
  Bwd<T> r;
  if (kind == Kind::Tensor) {
    auto xt = nkref::make_tensor<T, R, L>(dims, x);
    auto dyt = nkref::make_tensor<T, R, L>(dims, dy);
    auto dxt = nkref::filled_tensor<T, R, L>(dims, T(-777));
    r.grads = bn.backward(xt, dyt, stats, dxt);
    r.dx = nkref::to_rowmajor(dxt);
  } else {
    std::vector<T> xs(x.size()), dys(x.size()), dxs(x.size(), T(-777));
    nkref::from_rowmajor(x, Eigen::TensorMap<Eigen::Tensor<T, R, L>>(xs.data(), dims));
    nkref::from_rowmajor(dy, Eigen::TensorMap<Eigen::Tensor<T, R, L>>(dys.data(), dims));
    Eigen::TensorMap<const Eigen::Tensor<T, R, L>> xm(xs.data(), dims), dym(dys.data(), dims);
    r.grads = bn.backward(xm, dym, stats, Eigen::TensorMap<Eigen::Tensor<T, R, L>>(dxs.data(), dims));
    r.dx = nkref::to_rowmajor(Eigen::TensorMap<const Eigen::Tensor<T, R, L>>(dxs.data(), dims));
  }
  return r;
}

template <class T, int R, int L>
Fwd<T> run_forward_dev(BatchNorm<T>& bn, const Eigen::ThreadPoolDevice& dev,
                       const std::array<Index, static_cast<std::size_t>(R)>& dims, const Vec& x) {
  Fwd<T> r;
  auto xt = nkref::make_tensor<T, R, L>(dims, x);
  auto yt = nkref::filled_tensor<T, R, L>(dims, T(-777));
  r.stats = bn.forward(dev, xt, yt);
  r.y = nkref::to_rowmajor(yt);
  return r;
}

template <class T, int R, int L>
Bwd<T> run_backward_dev(const BatchNorm<T>& bn, const Eigen::ThreadPoolDevice& dev,
                        const std::array<Index, static_cast<std::size_t>(R)>& dims, const Vec& x, const Vec& dy,
                        const normkit::NormStats<T>& stats) {
  Bwd<T> r;
  auto xt = nkref::make_tensor<T, R, L>(dims, x);
  auto dyt = nkref::make_tensor<T, R, L>(dims, dy);
  auto dxt = nkref::filled_tensor<T, R, L>(dims, T(-777));
  r.grads = bn.backward(dev, xt, dyt, stats, dxt);
  r.dx = nkref::to_rowmajor(dxt);
  return r;
}

template <class T>
void set_params(BatchNorm<T>& bn, RefBatchNorm& ref, Index C, std::uint64_t seed) {
  if (!ref.affine) return;
  ref.weight = nkref::round_to<T>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0xA5A5, 0.5, 1.5));
  ref.bias = nkref::round_to<T>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x5A5A, -1.0, 1.0));
  bn.weight() = nkref::tensor1<T>(ref.weight);
  bn.bias() = nkref::tensor1<T>(ref.bias);
}

template <class T>
void set_running(BatchNorm<T>& bn, RefBatchNorm& ref, Index C, std::uint64_t seed) {
  ref.running_mean = nkref::round_to<T>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x1234, -2.0, 2.0));
  ref.running_var = nkref::round_to<T>(nkref::uniform_vec(static_cast<std::size_t>(C), seed ^ 0x4321, 0.2, 3.0));
  bn.running_mean() = nkref::tensor1<T>(ref.running_mean);
  bn.running_var() = nkref::tensor1<T>(ref.running_var);
}

// Library state vs reference state.
template <class T>
void check_state(BatchNorm<T>& bn, const RefBatchNorm& ref) {
  if (ref.track) {
    CHECK(max_rel_diff(nkref::vec1(bn.running_mean()), ref.running_mean) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(bn.running_var()), ref.running_var) <= tol<T>());
    CHECK(bn.num_batches_tracked() == ref.num_batches_tracked);
  } else {
    CHECK(bn.running_mean().size() == 0);
    CHECK(bn.running_var().size() == 0);
  }
}

template <class T>
void check_fwd(const Fwd<T>& f, const nkref::RefOutput& r) {
  REQUIRE(f.y.size() == r.y.size());
  CHECK(max_rel_diff(f.y, r.y) <= tol<T>());
  CHECK(max_rel_diff(nkref::vec1(f.stats.mean), r.mean) <= tol<T>());
  CHECK(max_rel_diff(nkref::vec1(f.stats.rstd), r.rstd) <= tol<T>());
  // normkit extension: mean_lo, when present, is the rounding error of mean (|mean_lo| <= ulp(mean))
  if (f.stats.mean_lo.size() != 0) {
    REQUIRE(f.stats.mean_lo.size() == f.stats.mean.size());
    using A = normkit::accum_t<T>;
    for (Index c = 0; c < f.stats.mean.size(); ++c)
      CHECK(std::abs(f.stats.mean_lo(c)) <= 2 * std::numeric_limits<A>::epsilon() * std::abs(f.stats.mean(c)));
  }
}

struct SequenceResult {
  std::vector<Vec> ys;  // every training y, then the eval y
  Vec running_mean, running_var;
};

// `train_batches` training forwards then one eval forward, each checked against the reference; the
// eval forward must leave the running statistics and the counter untouched.
template <class T, int R, int L>
SequenceResult run_sequence(const std::array<Index, static_cast<std::size_t>(R)>& dims, const BatchNormOptions& opt,
                            std::uint64_t seed, int train_batches, Kind kind) {
  INFO(type_name<T>() << ' ' << layout_name(L) << (kind == Kind::Map ? " TensorMap" : " Tensor") << " dims "
                      << dims_str(dims) << ' ' << opt_str(opt));
  const int axis = nkref::normalize_axis(opt.channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  BatchNorm<T> bn(C, opt);
  RefBatchNorm ref(C, opt.eps, opt.momentum, opt.affine, opt.track_running_stats);
  CHECK(bn.training());
  check_state(bn, ref);
  set_params(bn, ref, C, seed);

  SequenceResult out;
  for (int b = 0; b < train_batches; ++b) {
    INFO("training batch " << b);
    const Vec x = nkref::round_to<T>(nkref::channel_input(dv, axis, seed + 101 * static_cast<std::uint64_t>(b)));
    const auto f = run_forward<T, R, L>(bn, dims, x, kind);
    const auto r = ref.forward(dv, axis, x);
    check_fwd(f, r);
    check_state(bn, ref);
    out.ys.push_back(f.y);
  }

  bn.eval();
  ref.training = false;
  CHECK_FALSE(bn.training());
  const Vec rm_before = nkref::vec1(bn.running_mean()), rv_before = nkref::vec1(bn.running_var());
  const auto nbt_before = bn.num_batches_tracked();
  {
    INFO("eval batch");
    const Vec x = nkref::round_to<T>(nkref::channel_input(dv, axis, seed + 7777));
    const auto f = run_forward<T, R, L>(bn, dims, x, kind);
    const auto r = ref.forward(dv, axis, x);
    check_fwd(f, r);
    out.ys.push_back(f.y);
    // eval forward changes no state (bit for bit)
    CHECK(nkref::vec1(bn.running_mean()) == rm_before);
    CHECK(nkref::vec1(bn.running_var()) == rv_before);
    CHECK(bn.num_batches_tracked() == nbt_before);
    check_state(bn, ref);
  }
  out.running_mean = nkref::vec1(bn.running_mean());
  out.running_var = nkref::vec1(bn.running_var());
  return out;
}

// The same sequence through RowMajor/ColMajor Tensors and TensorMaps: each against the reference,
// and all four against each other.
template <class T, int R>
void run_all_layouts(const std::array<Index, static_cast<std::size_t>(R)>& dims, const BatchNormOptions& opt,
                     std::uint64_t seed, int batches, bool maps = true) {
  std::vector<SequenceResult> res;
  res.push_back(run_sequence<T, R, kRow>(dims, opt, seed, batches, Kind::Tensor));
  res.push_back(run_sequence<T, R, kCol>(dims, opt, seed, batches, Kind::Tensor));
  if (maps) {
    res.push_back(run_sequence<T, R, kRow>(dims, opt, seed, batches, Kind::Map));
    res.push_back(run_sequence<T, R, kCol>(dims, opt, seed, batches, Kind::Map));
  }
  INFO(type_name<T>() << " dims " << dims_str(dims) << ' ' << opt_str(opt) << ": layouts/maps agree");
  for (std::size_t i = 1; i < res.size(); ++i) {
    REQUIRE(res[i].ys.size() == res[0].ys.size());
    for (std::size_t b = 0; b < res[0].ys.size(); ++b) CHECK(max_rel_diff(res[i].ys[b], res[0].ys[b]) <= tol<T>());
    CHECK(max_rel_diff(res[i].running_mean, res[0].running_mean) <= tol<T>());
    CHECK(max_rel_diff(res[i].running_var, res[0].running_var) <= tol<T>());
  }
}

template <class T, int R>
void option_sweep(const std::array<Index, static_cast<std::size_t>(R)>& dims, Index channel_axis, std::uint64_t seed) {
  for (bool affine : {true, false})
    for (bool track : {true, false}) {
      BatchNormOptions o;
      o.affine = affine;
      o.track_running_stats = track;
      o.channel_axis = channel_axis;
      run_all_layouts<T, R>(dims, o, seed, 2);
      seed += 13;
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("BatchNorm starts in PyTorch's initial state", "[batch_norm]", float, double) {
  BatchNorm<TestType> bn(5);
  CHECK(bn.training());
  REQUIRE(bn.weight().size() == 5);
  REQUIRE(bn.bias().size() == 5);
  REQUIRE(bn.running_mean().size() == 5);
  REQUIRE(bn.running_var().size() == 5);
  for (Index c = 0; c < 5; ++c) {
    CHECK(bn.weight()(c) == TestType(1));
    CHECK(bn.bias()(c) == TestType(0));
    CHECK(bn.running_mean()(c) == TestType(0));
    CHECK(bn.running_var()(c) == TestType(1));
  }
  CHECK(bn.num_batches_tracked() == 0);
  bn.eval();
  CHECK_FALSE(bn.training());
  bn.train();
  CHECK(bn.training());
  bn.train(false);
  CHECK_FALSE(bn.training());
  bn.train(true);
  CHECK(bn.training());

  BatchNormOptions o;
  o.track_running_stats = false;
  BatchNorm<TestType> untracked(4, o);
  CHECK(untracked.running_mean().size() == 0);
  CHECK(untracked.running_var().size() == 0);
  CHECK(untracked.num_batches_tracked() == 0);
}

TEMPLATE_TEST_CASE("BatchNorm forward matches the float64 reference for every option, layout and map", "[batch_norm]",
                   float, double) {
  using T = TestType;
  SECTION("(N, C), C = 3") { option_sweep<T, 2>({6, 3}, 1, 11); }
  SECTION("(N, C, L), C = 3, L = 7") { option_sweep<T, 3>({4, 3, 7}, 1, 21); }
  SECTION("(N, C, H, W), C = 3, HW = 7*5") { option_sweep<T, 4>({2, 3, 7, 5}, 1, 31); }
  SECTION("(N, C, H, W), C = 17, HW = 3*5") { option_sweep<T, 4>({3, 17, 3, 5}, 1, 35); }
  SECTION("channels-last (N, C) with -1 and 1") {
    option_sweep<T, 2>({5, 7}, -1, 41);
    option_sweep<T, 2>({5, 7}, 1, 41);
  }
  SECTION("channels-last (N, L, C) with -1 and 2") {
    option_sweep<T, 3>({2, 5, 3}, -1, 51);
    option_sweep<T, 3>({2, 5, 3}, 2, 51);
  }
  SECTION("channels-last (N, H, W, C) with -1 and 3") {
    option_sweep<T, 4>({2, 7, 5, 3}, -1, 61);
    option_sweep<T, 4>({2, 7, 5, 3}, 3, 61);
  }
  SECTION("channel axis in the middle, (N, H, C, W) with 2 and -2") {
    BatchNormOptions o;
    o.channel_axis = 2;
    run_all_layouts<T, 4>({2, 3, 5, 4}, o, 71, 2);
    o.channel_axis = -2;
    run_all_layouts<T, 4>({2, 3, 5, 4}, o, 71, 2);
  }
  SECTION("large (8, 64, 14, 14)") {
    BatchNormOptions o;
    run_all_layouts<T, 4>({8, 64, 14, 14}, o, 81, 1, /*maps=*/false);
  }
  SECTION("large channels-last (4, 14, 14, 64)") {
    BatchNormOptions o;
    o.channel_axis = -1;
    run_all_layouts<T, 4>({4, 14, 14, 64}, o, 91, 1, /*maps=*/false);
  }
  SECTION("eps values") {
    for (double eps : {0.0, 1e-3, 0.5}) {
      BatchNormOptions o;
      o.eps = eps;
      run_all_layouts<T, 3>({3, 4, 5}, o, 101, 2, false);
    }
  }
}

TEMPLATE_TEST_CASE("BatchNorm input and output may have different layouts", "[batch_norm]", float, double) {
  using T = TestType;
  const std::array<Index, 4> dims{3, 5, 4, 3};
  const auto dv = nkref::dims_vec(dims, 4);
  const Vec x = nkref::round_to<T>(nkref::channel_input(dv, 1, 5));
  BatchNorm<T> a(5), b(5);
  RefBatchNorm ref(5, 1e-5, 0.1, true, true);
  const auto fa = run_forward<T, 4, kRow, kCol>(a, dims, x);
  const auto fb = run_forward<T, 4, kCol, kRow>(b, dims, x);
  const auto r = ref.forward(dv, 1, x);
  check_fwd(fa, r);
  check_fwd(fb, r);
  check_state(a, ref);
  check_state(b, ref);
}

TEMPLATE_TEST_CASE("BatchNorm operator() returns y with the input's dimensions and layout", "[batch_norm]", float,
                   double) {
  using T = TestType;
  const std::array<Index, 3> dims{4, 3, 5};
  const auto dv = nkref::dims_vec(dims, 3);
  const Vec x = nkref::round_to<T>(nkref::channel_input(dv, 1, 8));
  RefBatchNorm ref(3, 1e-5, 0.1, true, true);

  BatchNorm<T> bn(3);
  const auto xr = nkref::make_tensor<T, 3, kRow>(dims, x);
  auto yr = bn(xr);
  static_assert(static_cast<int>(decltype(yr)::Layout) == kRow, "operator() keeps RowMajor");
  CHECK(nkref::dims_vec(yr.dimensions(), 3) == dv);
  const auto r = ref.forward(dv, 1, x);
  CHECK(max_rel_diff(nkref::to_rowmajor(yr), r.y) <= tol<T>());
  check_state(bn, ref);  // operator() in training updates running stats like forward

  BatchNorm<T> bc(3);
  const auto xc = nkref::make_tensor<T, 3, kCol>(dims, x);
  auto yc = bc(xc);
  static_assert(static_cast<int>(decltype(yc)::Layout) == kCol, "operator() keeps ColMajor");
  CHECK(nkref::dims_vec(yc.dimensions(), 3) == dv);
  CHECK(max_rel_diff(nkref::to_rowmajor(yc), r.y) <= tol<T>());
}

// ---------------------------------------------------------------------------------------------------
// Running statistics.

TEMPLATE_TEST_CASE("BatchNorm running statistics over several batches", "[batch_norm][running]", float, double) {
  using T = TestType;
  SECTION("momentum 0.1, 0, 1, 0.37 and cumulative, 4 batches, channel axis 1 and -1") {
    const std::optional<double> moms[] = {0.1, 0.0, 1.0, 0.37, std::nullopt};
    std::uint64_t seed = 200;
    for (const auto& m : moms) {
      BatchNormOptions o;
      o.momentum = m;
      run_all_layouts<T, 3>({5, 4, 3}, o, seed++, 4);
      o.channel_axis = -1;
      run_all_layouts<T, 3>({5, 3, 4}, o, seed++, 4);
      o.affine = false;
      run_all_layouts<T, 2>({6, 4}, o, seed++, 4, false);
    }
  }

  // Explicit formulas, independent of RefBatchNorm's update code.
  const std::array<Index, 3> dims{3, 2, 2};  // n = 6 values per channel
  const auto dv = nkref::dims_vec(dims, 3);
  std::vector<Vec> xs, means, unbiased;
  for (int b = 0; b < 4; ++b) {
    xs.push_back(nkref::round_to<T>(nkref::channel_input(dv, 1, 300 + static_cast<std::uint64_t>(b))));
    Vec m, v;
    RefBatchNorm::batch_moments(dv, 1, xs.back(), m, v);
    for (auto& e : v) e *= 6.0 / 5.0;
    means.push_back(m);
    unbiased.push_back(v);
  }
  auto train_all = [&](BatchNorm<T>& bn) {
    for (const auto& x : xs) (void)run_forward<T, 3, kRow>(bn, dims, x);
  };

  SECTION("momentum 0 keeps the initial 0 / 1 and still counts batches") {
    BatchNormOptions o;
    o.momentum = 0.0;
    BatchNorm<T> bn(2, o);
    train_all(bn);
    CHECK(nkref::vec1(bn.running_mean()) == Vec{0.0, 0.0});
    CHECK(nkref::vec1(bn.running_var()) == Vec{1.0, 1.0});
    CHECK(bn.num_batches_tracked() == 4);
  }
  SECTION("momentum 1 keeps the last batch's mean and unbiased variance n/(n-1)") {
    BatchNormOptions o;
    o.momentum = 1.0;
    BatchNorm<T> bn(2, o);
    train_all(bn);
    CHECK(max_rel_diff(nkref::vec1(bn.running_mean()), means[3]) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(bn.running_var()), unbiased[3]) <= tol<T>());
    CHECK(bn.num_batches_tracked() == 4);
  }
  SECTION("momentum 0.1: running = 0.9 running + 0.1 batch") {
    BatchNorm<T> bn(2);
    train_all(bn);
    Vec rm{0, 0}, rv{1, 1};
    for (int b = 0; b < 4; ++b)
      for (std::size_t c = 0; c < 2; ++c) {
        rm[c] = 0.9 * rm[c] + 0.1 * means[static_cast<std::size_t>(b)][c];
        rv[c] = 0.9 * rv[c] + 0.1 * unbiased[static_cast<std::size_t>(b)][c];
      }
    CHECK(max_rel_diff(nkref::vec1(bn.running_mean()), rm) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(bn.running_var()), rv) <= tol<T>());
  }
  SECTION("cumulative average (momentum = nullopt) over equal batches is the plain average") {
    BatchNormOptions o;
    o.momentum = std::nullopt;
    BatchNorm<T> bn(2, o);
    (void)run_forward<T, 3, kRow>(bn, dims, xs[0]);
    // first batch: factor 1/1, running = batch statistics exactly
    CHECK(max_rel_diff(nkref::vec1(bn.running_mean()), means[0]) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(bn.running_var()), unbiased[0]) <= tol<T>());
    // an empty batch in between is not counted
    const std::array<Index, 3> empty{0, 2, 2};
    (void)run_forward<T, 3, kRow>(bn, empty, Vec{});
    CHECK(bn.num_batches_tracked() == 1);
    for (int b = 1; b < 4; ++b) (void)run_forward<T, 3, kRow>(bn, dims, xs[static_cast<std::size_t>(b)]);
    CHECK(bn.num_batches_tracked() == 4);
    Vec rm{0, 0}, rv{0, 0};
    for (int b = 0; b < 4; ++b)
      for (std::size_t c = 0; c < 2; ++c) {
        rm[c] += means[static_cast<std::size_t>(b)][c] / 4;
        rv[c] += unbiased[static_cast<std::size_t>(b)][c] / 4;
      }
    CHECK(max_rel_diff(nkref::vec1(bn.running_mean()), rm) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(bn.running_var()), rv) <= tol<T>());
  }
  SECTION("eval after training normalizes with the running statistics") {
    BatchNorm<T> bn(2);
    train_all(bn);
    bn.eval();
    const Vec rm = nkref::vec1(bn.running_mean()), rv = nkref::vec1(bn.running_var());
    const Vec x = nkref::round_to<T>(nkref::channel_input(dv, 1, 999));
    const auto f = run_forward<T, 3, kCol>(bn, dims, x);
    const nkref::ChannelLayout lay(dv, 1);
    Vec want(x.size());
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      want[k] = (x[k] - rm[c]) / std::sqrt(rv[c] + 1e-5);  // weight 1, bias 0
    }
    CHECK(max_rel_diff(f.y, want) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(f.stats.mean), rm) <= tol<T>());
    CHECK(max_rel_diff(nkref::vec1(f.stats.rstd), Vec{1 / std::sqrt(rv[0] + 1e-5), 1 / std::sqrt(rv[1] + 1e-5)}) <=
          tol<T>());
    CHECK(nkref::vec1(bn.running_mean()) == rm);
    CHECK(nkref::vec1(bn.running_var()) == rv);
    CHECK(bn.num_batches_tracked() == 4);
    // back to training: batch statistics again, and the counter moves on
    bn.train();
    const auto g = run_forward<T, 3, kCol>(bn, dims, x);
    Vec bm, bv;
    RefBatchNorm::batch_moments(dv, 1, x, bm, bv);
    CHECK(max_rel_diff(nkref::vec1(g.stats.mean), bm) <= tol<T>());
    CHECK(bn.num_batches_tracked() == 5);
  }
  SECTION("track_running_stats = false uses batch statistics in eval too and keeps no running stats") {
    BatchNormOptions o;
    o.track_running_stats = false;
    BatchNorm<T> bn(2, o);
    train_all(bn);
    bn.eval();
    const auto f = run_forward<T, 3, kRow>(bn, dims, xs[1]);
    CHECK(max_rel_diff(nkref::vec1(f.stats.mean), means[1]) <= tol<T>());
    Vec biased = unbiased[1];
    for (auto& e : biased) e = 1 / std::sqrt(e * 5.0 / 6.0 + 1e-5);
    CHECK(max_rel_diff(nkref::vec1(f.stats.rstd), biased) <= tol<T>());
    CHECK(bn.running_mean().size() == 0);
    CHECK(bn.running_var().size() == 0);
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward.

namespace {

// L(x, weight, bias) = sum_k y_k * dy_k through the library's forward, on a copy of `bn` (so the
// running statistics of `bn` are not disturbed).
template <int R, int L>
double loss(const BatchNorm<double>& bn, const std::array<Index, static_cast<std::size_t>(R)>& dims, const Vec& x,
            const Vec& dy) {
  BatchNorm<double> probe = bn;
  const auto f = run_forward<double, R, L>(probe, dims, x);
  double s = 0;
  for (std::size_t k = 0; k < dy.size(); ++k) s += f.y[k] * dy[k];
  return s;
}

template <int R, int L>
void fd_check(const std::array<Index, static_cast<std::size_t>(R)>& dims, BatchNormOptions opt, bool training,
              std::uint64_t seed) {
  INFO("double " << layout_name(L) << " dims " << dims_str(dims) << ' ' << opt_str(opt)
                 << (training ? " training" : " eval"));
  const int axis = nkref::normalize_axis(opt.channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  BatchNorm<double> bn(C, opt);
  RefBatchNorm ref(C, opt.eps, opt.momentum, opt.affine, opt.track_running_stats);
  set_params(bn, ref, C, seed);
  if (opt.track_running_stats) set_running(bn, ref, C, seed);
  if (!training) {
    bn.eval();
    ref.training = false;
  }
  const Vec x = nkref::channel_input(dv, axis, seed + 1);
  const Vec dy = nkref::uniform_vec(x.size(), seed + 2, -1.0, 1.0);
  const BatchNorm<double> at_start = bn;  // the state the forward ran from

  const auto f = run_forward<double, R, L>(bn, dims, x);
  const auto b = run_backward<double, R, L>(bn, dims, x, dy, f.stats);
  const auto r = ref.forward(dv, axis, x);
  const auto rg = ref.backward(dv, axis, x, dy, r.mean, r.rstd);

  // analytic reference
  CHECK(max_rel_diff(b.dx, rg.dx) <= 1e-10);
  if (opt.affine) {
    CHECK(max_rel_diff(nkref::vec1(b.grads.weight), rg.dweight) <= 1e-10);
    CHECK(max_rel_diff(nkref::vec1(b.grads.bias), rg.dbias) <= 1e-10);
  } else {
    CHECK(b.grads.weight.size() == 0);
    CHECK(b.grads.bias.size() == 0);
  }

  // finite differences of the library's own forward
  const double h = 1e-5;
  Vec fd_dx(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) {
    Vec xp = x, xm = x;
    xp[k] += h;
    xm[k] -= h;
    fd_dx[k] = (loss<R, L>(at_start, dims, xp, dy) - loss<R, L>(at_start, dims, xm, dy)) / (2 * h);
  }
  CHECK(max_rel_diff(b.dx, fd_dx) <= 1e-6);
  if (opt.affine) {
    Vec fd_w(static_cast<std::size_t>(C)), fd_b(static_cast<std::size_t>(C));
    for (Index c = 0; c < C; ++c) {
      BatchNorm<double> p = at_start, m = at_start;
      p.weight()(c) += h;
      m.weight()(c) -= h;
      fd_w[static_cast<std::size_t>(c)] = (loss<R, L>(p, dims, x, dy) - loss<R, L>(m, dims, x, dy)) / (2 * h);
      p = at_start;
      m = at_start;
      p.bias()(c) += h;
      m.bias()(c) -= h;
      fd_b[static_cast<std::size_t>(c)] = (loss<R, L>(p, dims, x, dy) - loss<R, L>(m, dims, x, dy)) / (2 * h);
    }
    CHECK(max_rel_diff(nkref::vec1(b.grads.weight), fd_w) <= 1e-6);
    CHECK(max_rel_diff(nkref::vec1(b.grads.bias), fd_b) <= 1e-6);
  }

  // TensorMap backward gives the same
  const auto bm = run_backward<double, R, L>(bn, dims, x, dy, f.stats, Kind::Map);
  CHECK(max_rel_diff(bm.dx, b.dx) <= 1e-12);
}

template <int R>
void fd_suite(const std::array<Index, static_cast<std::size_t>(R)>& dims, Index channel_axis, std::uint64_t seed) {
  for (bool affine : {true, false})
    for (int mode = 0; mode < 3; ++mode) {  // 0 training, 1 eval with running stats, 2 eval untracked
      BatchNormOptions o;
      o.affine = affine;
      o.channel_axis = channel_axis;
      o.track_running_stats = mode != 2;
      fd_check<R, kRow>(dims, o, mode == 0, seed);
      fd_check<R, kCol>(dims, o, mode == 0, seed);
      seed += 17;
    }
}

// Float backward against the float64 analytic reference (at the float64 statistics of the same,
// float-rounded, input).
template <int R, int L>
void float_backward_check(const std::array<Index, static_cast<std::size_t>(R)>& dims, BatchNormOptions opt,
                          bool training, std::uint64_t seed) {
  using T = float;
  INFO("float " << layout_name(L) << " dims " << dims_str(dims) << ' ' << opt_str(opt)
                << (training ? " training" : " eval"));
  const int axis = nkref::normalize_axis(opt.channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  BatchNorm<T> bn(C, opt);
  RefBatchNorm ref(C, opt.eps, opt.momentum, opt.affine, opt.track_running_stats);
  set_params(bn, ref, C, seed);
  if (opt.track_running_stats) set_running(bn, ref, C, seed);
  if (!training) {
    bn.eval();
    ref.training = false;
  }
  const Vec x = nkref::round_to<T>(nkref::channel_input(dv, axis, seed + 1));
  const Vec dy = nkref::round_to<T>(nkref::uniform_vec(x.size(), seed + 2, -1.0, 1.0));
  const auto f = run_forward<T, R, L>(bn, dims, x);
  const auto b = run_backward<T, R, L>(bn, dims, x, dy, f.stats);
  const auto r = ref.forward(dv, axis, x);
  const auto rg = ref.backward(dv, axis, x, dy, r.mean, r.rstd);
  CHECK(nkref::max_abs_diff(b.dx, rg.dx) <= 1e-4 * (1 + nkref::max_abs(rg.dx)));
  if (opt.affine) {
    const nkref::ChannelLayout lay(dv, axis);
    Vec dy_xhat(x.size());
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      dy_xhat[k] = dy[k] * (x[k] - r.mean[c]) * r.rstd[c];
    }
    const Vec sw = nkref::channel_abs_sums(dv, axis, dy_xhat), sb = nkref::channel_abs_sums(dv, axis, dy);
    const Vec gw = nkref::vec1(b.grads.weight), gb = nkref::vec1(b.grads.bias);
    REQUIRE(gw.size() == static_cast<std::size_t>(C));
    REQUIRE(gb.size() == static_cast<std::size_t>(C));
    for (std::size_t c = 0; c < gw.size(); ++c) {
      CHECK(std::abs(gw[c] - rg.dweight[c]) <= 1e-4 * (1 + sw[c]));
      CHECK(std::abs(gb[c] - rg.dbias[c]) <= 1e-4 * (1 + sb[c]));
    }
  } else {
    CHECK(b.grads.weight.size() == 0);
    CHECK(b.grads.bias.size() == 0);
  }
}

}  // namespace

TEST_CASE("BatchNorm backward (double) matches finite differences and the analytic reference",
          "[batch_norm][backward]") {
  SECTION("(N, C) channel axis 1") { fd_suite<2>({5, 3}, 1, 400); }
  SECTION("(N, C, L) channel axis 1") { fd_suite<3>({3, 4, 5}, 1, 500); }
  SECTION("(N, L, C) channel axis -1") { fd_suite<3>({3, 5, 4}, -1, 600); }
  SECTION("(N, C, H, W) channel axis 1") { fd_suite<4>({2, 3, 3, 2}, 1, 700); }
  SECTION("(N, H, W, C) channel axis -1 and 3") {
    fd_suite<4>({2, 3, 2, 3}, -1, 800);
    fd_suite<4>({2, 3, 2, 3}, 3, 800);
  }
}

TEST_CASE("BatchNorm backward (float) matches the float64 analytic reference", "[batch_norm][backward]") {
  for (bool training : {true, false})
    for (bool affine : {true, false}) {
      BatchNormOptions o;
      o.affine = affine;
      float_backward_check<4, kRow>({2, 3, 7, 5}, o, training, 900);
      float_backward_check<4, kCol>({2, 3, 7, 5}, o, training, 900);
      o.channel_axis = -1;
      float_backward_check<4, kRow>({2, 7, 5, 3}, o, training, 910);
      float_backward_check<4, kCol>({2, 7, 5, 3}, o, training, 910);
      o.channel_axis = 1;
      o.track_running_stats = false;
      float_backward_check<3, kCol>({4, 6, 9}, o, training, 920);
    }
  BatchNormOptions o;
  float_backward_check<4, kRow>({8, 64, 14, 14}, o, true, 930);
  float_backward_check<4, kCol>({8, 64, 14, 14}, o, true, 930);
  float_backward_check<4, kCol>({8, 64, 14, 14}, o, false, 940);
}

// ---------------------------------------------------------------------------------------------------
// Backward follows the statistics it is given (stats.source), not the functor's mode at the time of
// the call: autograd's behaviour. Switching mode between forward and backward used to give the
// wrong gradient silently (off by up to 1.9 where |dx| <= 1.9).

namespace {

template <int R, int L>
void stats_source_check(const std::array<Index, static_cast<std::size_t>(R)>& dims, Index channel_axis,
                        std::uint64_t seed) {
  INFO(layout_name(L) << " dims " << dims_str(dims) << " channel_axis " << channel_axis);
  const int axis = nkref::normalize_axis(channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  BatchNormOptions o;
  o.channel_axis = channel_axis;
  BatchNorm<double> bn(C, o);
  RefBatchNorm ref(C, o.eps, o.momentum, o.affine, o.track_running_stats);
  set_params(bn, ref, C, seed);
  set_running(bn, ref, C, seed);
  const Vec x = nkref::channel_input(dv, axis, seed + 1);
  const Vec dy = nkref::uniform_vec(x.size(), seed + 2, -1.0, 1.0);

  // Training forward, then eval(), then backward: the batch gradient.
  RefBatchNorm ref_train = ref;
  const auto rt = ref_train.forward(dv, axis, x);
  const auto ft = run_forward<double, R, L>(bn, dims, x);
  CHECK(ft.stats.source == normkit::StatsSource::Batch);
  bn.eval();
  const auto bt = run_backward<double, R, L>(bn, dims, x, dy, ft.stats);
  const auto gt = ref_train.backward(dv, axis, x, dy, rt.mean, rt.rstd);
  CHECK(max_rel_diff(bt.dx, gt.dx) <= 1e-11);
  CHECK(max_rel_diff(nkref::vec1(bt.grads.weight), gt.dweight) <= 1e-11);
  // The test can tell the two gradients apart: the eval formula at these stats is far off.
  RefBatchNorm ref_as_eval = ref_train;
  ref_as_eval.training = false;
  CHECK(max_rel_diff(ref_as_eval.backward(dv, axis, x, dy, rt.mean, rt.rstd).dx, gt.dx) > 1e-3);

  // Eval forward (running statistics), then train(), then backward: dx = dy * weight * rstd.
  RefBatchNorm ref_eval = ref_train;  // running stats as the library's after one training forward
  ref_eval.training = false;
  const auto re = ref_eval.forward(dv, axis, x);
  const auto fe = run_forward<double, R, L>(bn, dims, x);
  CHECK(fe.stats.source == normkit::StatsSource::Running);
  bn.train();
  const auto be = run_backward<double, R, L>(bn, dims, x, dy, fe.stats);
  const auto ge = ref_eval.backward(dv, axis, x, dy, re.mean, re.rstd);
  CHECK(max_rel_diff(be.dx, ge.dx) <= 1e-11);
  CHECK(max_rel_diff(nkref::vec1(be.grads.bias), ge.dbias) <= 1e-11);
}

}  // namespace

TEST_CASE("BatchNorm backward follows the stats' source, not the current mode", "[batch_norm][backward]") {
  stats_source_check<4, kRow>({3, 4, 5, 2}, 1, 1300);
  stats_source_check<4, kCol>({3, 4, 5, 2}, 1, 1310);
  stats_source_check<4, kRow>({3, 5, 2, 4}, -1, 1320);
  stats_source_check<2, kRow>({16, 3}, 1, 1330);
}

// ---------------------------------------------------------------------------------------------------
// Degenerate batches.

TEMPLATE_TEST_CASE("BatchNorm training with one value per channel throws and changes nothing", "[batch_norm]", float,
                   double) {
  using T = TestType;
  auto check_throws = [](auto dims, Index channel_axis) {
    constexpr int R = static_cast<int>(std::tuple_size<decltype(dims)>::value);
    INFO("dims " << dims_str(dims) << " channel_axis " << channel_axis);
    const int axis = nkref::normalize_axis(channel_axis, R);
    const Index C = dims[static_cast<std::size_t>(axis)];
    BatchNormOptions o;
    o.channel_axis = channel_axis;
    BatchNorm<T> bn(C, o);
    // one good batch first, so the state is not the initial one
    auto good = dims;
    good[0] = 4;
    const auto gv = nkref::dims_vec(good, R);
    (void)run_forward<T, R, kRow>(bn, good, nkref::round_to<T>(nkref::channel_input(gv, axis, 3)));
    REQUIRE(bn.num_batches_tracked() == 1);
    const Vec rm = nkref::vec1(bn.running_mean()), rv = nkref::vec1(bn.running_var());

    const auto dv = nkref::dims_vec(dims, R);
    auto x = nkref::make_tensor<T, R, kRow>(dims, nkref::round_to<T>(nkref::channel_input(dv, axis, 4)));
    auto y = nkref::filled_tensor<T, R, kRow>(dims, T(-777));
    CHECK_THROWS_AS(bn.forward(x, y), std::invalid_argument);
    CHECK(bn.num_batches_tracked() == 1);
    CHECK(nkref::vec1(bn.running_mean()) == rm);
    CHECK(nkref::vec1(bn.running_var()) == rv);
    for (double v : nkref::to_rowmajor(y)) CHECK(v == -777.0);
    auto yc = nkref::filled_tensor<T, R, kCol>(dims, T(-777));
    CHECK_THROWS_AS(bn.forward(nkref::make_tensor<T, R, kCol>(dims, nkref::to_rowmajor(x)), yc), std::invalid_argument);
    for (double v : nkref::to_rowmajor(yc)) CHECK(v == -777.0);
    CHECK(bn.num_batches_tracked() == 1);

    // eval with tracking uses the running statistics: one value per channel is fine
    bn.eval();
    RefBatchNorm ref(C, 1e-5, 0.1, true, true);
    ref.training = false;
    ref.running_mean = rm;
    ref.running_var = rv;
    const auto f = run_forward<T, R, kRow>(bn, dims, nkref::to_rowmajor(x));
    check_fwd(f, ref.forward(dv, axis, nkref::to_rowmajor(x)));
  };
  check_throws(std::array<Index, 2>{1, 3}, 1);
  check_throws(std::array<Index, 3>{1, 5, 1}, 1);
  check_throws(std::array<Index, 4>{1, 3, 1, 1}, 1);
  check_throws(std::array<Index, 4>{1, 1, 1, 3}, -1);

  // one sample but several values per channel is a valid training batch
  BatchNorm<T> bn(3);
  const std::array<Index, 3> dims{1, 3, 4};
  const auto dv = nkref::dims_vec(dims, 3);
  const Vec x = nkref::round_to<T>(nkref::channel_input(dv, 1, 5));
  RefBatchNorm ref(3, 1e-5, 0.1, true, true);
  check_fwd(run_forward<T, 3, kCol>(bn, dims, x), ref.forward(dv, 1, x));
  check_state(bn, ref);
}

TEMPLATE_TEST_CASE("BatchNorm on an empty batch changes no state", "[batch_norm]", float, double) {
  using T = TestType;
  for (Index axis : {Index(1), Index(-1)}) {
    INFO("channel_axis " << axis);
    BatchNormOptions o;
    o.channel_axis = axis;
    const std::array<Index, 3> good = axis == 1 ? std::array<Index, 3>{4, 3, 5} : std::array<Index, 3>{4, 5, 3};
    const std::array<Index, 3> empty = axis == 1 ? std::array<Index, 3>{0, 3, 5} : std::array<Index, 3>{0, 5, 3};
    BatchNorm<T> bn(3, o);
    (void)run_forward<T, 3, kRow>(
        bn, good, nkref::round_to<T>(nkref::channel_input(nkref::dims_vec(good, 3), axis == 1 ? 1 : 2, 6)));
    const Vec rm = nkref::vec1(bn.running_mean()), rv = nkref::vec1(bn.running_var());
    REQUIRE(bn.num_batches_tracked() == 1);

    for (bool training : {true, false}) {
      bn.train(training);
      for (int L : {kRow, kCol}) {
        normkit::NormStats<T> stats;
        if (L == kRow) {
          auto x = nkref::make_tensor<T, 3, kRow>(empty, {});
          auto y = nkref::make_tensor<T, 3, kRow>(empty, {});
          CHECK_NOTHROW(stats = bn.forward(x, y));
        } else {
          auto x = nkref::make_tensor<T, 3, kCol>(empty, {});
          auto y = nkref::make_tensor<T, 3, kCol>(empty, {});
          CHECK_NOTHROW(stats = bn.forward(x, y));
        }
        CHECK(bn.num_batches_tracked() == 1);
        CHECK(nkref::vec1(bn.running_mean()) == rm);
        CHECK(nkref::vec1(bn.running_var()) == rv);

        // backward of 0 rows: zero dweight / dbias of full size
        auto x = nkref::make_tensor<T, 3, kRow>(empty, {});
        auto dy = nkref::make_tensor<T, 3, kRow>(empty, {});
        auto dx = nkref::make_tensor<T, 3, kRow>(empty, {});
        normkit::NormGrads<T> g;
        CHECK_NOTHROW(g = bn.backward(x, dy, stats, dx));
        REQUIRE(g.weight.size() == 3);
        REQUIRE(g.bias.size() == 3);
        for (Index c = 0; c < 3; ++c) {
          CHECK(g.weight(c) == T(0));
          CHECK(g.bias(c) == T(0));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Threads.

namespace {

template <class T>
void check_close(const Vec& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  CHECK(max_rel_diff(a, b) <= thread_tol<T>());
}

template <class T, int R, int L>
void thread_check(const std::array<Index, static_cast<std::size_t>(R)>& dims, Index channel_axis, std::uint64_t seed) {
  INFO(type_name<T>() << ' ' << layout_name(L) << " dims " << dims_str(dims) << " channel_axis " << channel_axis);
  const int axis = nkref::normalize_axis(channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  BatchNormOptions o;
  o.channel_axis = channel_axis;
  BatchNorm<T> base(C, o);
  RefBatchNorm dummy(C, o.eps, o.momentum, o.affine, o.track_running_stats);
  set_params(base, dummy, C, seed);
  std::vector<Vec> xs;
  for (int b = 0; b < 2; ++b)
    xs.push_back(nkref::round_to<T>(nkref::channel_input(dv, axis, seed + 10 + static_cast<std::uint64_t>(b))));
  const Vec dy = nkref::round_to<T>(nkref::uniform_vec(xs[0].size(), seed + 3, -1.0, 1.0));

  // single thread: two training batches (forward + backward), then eval
  BatchNorm<T> one = base;
  const auto f1a = run_forward<T, R, L>(one, dims, xs[0]);
  const auto b1a = run_backward<T, R, L>(one, dims, xs[0], dy, f1a.stats);
  const auto f1b = run_forward<T, R, L>(one, dims, xs[1]);
  one.eval();
  const auto f1e = run_forward<T, R, L>(one, dims, xs[0]);
  const auto b1e = run_backward<T, R, L>(one, dims, xs[0], dy, f1e.stats);

  for (int n : {2, 3}) {
    INFO(n << " threads");
    Eigen::ThreadPool pool(n);
    Eigen::ThreadPoolDevice dev(&pool, n);
    BatchNorm<T> bn = base;
    const auto fa = run_forward_dev<T, R, L>(bn, dev, dims, xs[0]);
    const auto ba = run_backward_dev<T, R, L>(bn, dev, dims, xs[0], dy, fa.stats);
    const auto fb = run_forward_dev<T, R, L>(bn, dev, dims, xs[1]);
    check_close<T>(fa.y, f1a.y);
    check_close<T>(nkref::vec1(fa.stats.mean), nkref::vec1(f1a.stats.mean));
    check_close<T>(nkref::vec1(fa.stats.rstd), nkref::vec1(f1a.stats.rstd));
    check_close<T>(ba.dx, b1a.dx);
    check_close<T>(nkref::vec1(ba.grads.weight), nkref::vec1(b1a.grads.weight));
    check_close<T>(nkref::vec1(ba.grads.bias), nkref::vec1(b1a.grads.bias));
    check_close<T>(fb.y, f1b.y);
    check_close<T>(nkref::vec1(bn.running_mean()), nkref::vec1(one.running_mean()));
    check_close<T>(nkref::vec1(bn.running_var()), nkref::vec1(one.running_var()));
    CHECK(bn.num_batches_tracked() == 2);
    bn.eval();
    const auto fe = run_forward_dev<T, R, L>(bn, dev, dims, xs[0]);
    const auto be = run_backward_dev<T, R, L>(bn, dev, dims, xs[0], dy, fe.stats);
    check_close<T>(fe.y, f1e.y);
    check_close<T>(be.dx, b1e.dx);
    check_close<T>(nkref::vec1(be.grads.weight), nkref::vec1(b1e.grads.weight));
    check_close<T>(nkref::vec1(be.grads.bias), nkref::vec1(b1e.grads.bias));
    CHECK(bn.num_batches_tracked() == 2);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm ThreadPoolDevice overloads equal the single-threaded results", "[batch_norm][threads]",
                   float, double) {
  using T = TestType;
  thread_check<T, 2, kRow>({37, 35}, 1, 1000);
  thread_check<T, 3, kCol>({5, 3, 7}, 1, 1010);
  thread_check<T, 4, kRow>({4, 19, 9, 7}, 1, 1020);
  thread_check<T, 4, kCol>({4, 19, 9, 7}, 1, 1030);
  thread_check<T, 4, kRow>({4, 9, 7, 19}, -1, 1040);
  thread_check<T, 4, kCol>({4, 9, 7, 19}, 3, 1050);
  thread_check<T, 4, kRow>({8, 64, 14, 14}, 1, 1060);
}

// ---------------------------------------------------------------------------------------------------
// Non-finite values stay in their channel.

namespace {

template <class S, class TensorLike>
std::vector<S> raw(const TensorLike& t) {
  std::vector<double> v = nkref::to_rowmajor(t);
  std::vector<S> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<S>(v[i]);  // exact: values were S
  return out;
}

template <class T, int R, int L>
void nonfinite_check(const std::array<Index, static_cast<std::size_t>(R)>& dims, Index channel_axis, T bad,
                     std::uint64_t seed, bool track = true) {
  INFO(type_name<T>() << ' ' << layout_name(L) << " dims " << dims_str(dims) << " channel_axis " << channel_axis
                      << " bad value " << bad << " track " << track);
  const int axis = nkref::normalize_axis(channel_axis, R);
  const auto dv = nkref::dims_vec(dims, R);
  const Index C = dims[static_cast<std::size_t>(axis)];
  const nkref::ChannelLayout lay(dv, axis);
  BatchNormOptions o;
  o.channel_axis = channel_axis;
  o.track_running_stats = track;
  BatchNorm<T> clean(C, o);
  RefBatchNorm dummy(C, o.eps, o.momentum, o.affine, o.track_running_stats);
  set_params(clean, dummy, C, seed);
  BatchNorm<T> dirty = clean;
  if (!track) {  // untracked: batch statistics in eval mode as well
    clean.eval();
    dirty.eval();
  }

  const Vec x = nkref::round_to<T>(nkref::channel_input(dv, axis, seed));
  const Index bad_channel = C / 2;
  Vec xb = x;
  std::size_t placed = 0;
  for (std::size_t k = 0; k < xb.size(); ++k)
    if (lay.channel_of(static_cast<Index>(k)) == bad_channel && placed++ == 1) xb[k] = static_cast<double>(bad);
  REQUIRE(placed > 1);

  auto xt = nkref::make_tensor<T, R, L>(dims, x), xbt = nkref::make_tensor<T, R, L>(dims, xb);
  auto yt = nkref::filled_tensor<T, R, L>(dims, T(0)), ybt = nkref::filled_tensor<T, R, L>(dims, T(0));
  const auto sc = clean.forward(xt, yt);
  const auto sd = dirty.forward(xbt, ybt);
  const auto yc = raw<T>(yt), yd = raw<T>(ybt);
  std::size_t nan_count = 0, other = 0;
  bool others_identical = true;
  for (std::size_t k = 0; k < yc.size(); ++k) {
    if (lay.channel_of(static_cast<Index>(k)) == bad_channel) {
      nan_count += std::isnan(yd[k]) ? 1u : 0u;
    } else {
      ++other;
      others_identical = others_identical && std::memcmp(&yc[k], &yd[k], sizeof(T)) == 0;
    }
  }
  CHECK(nan_count == static_cast<std::size_t>(lay.per_channel));
  CHECK(other == yc.size() - static_cast<std::size_t>(lay.per_channel));
  CHECK(others_identical);
  for (Index c = 0; c < C; ++c) {
    if (c == bad_channel) continue;
    CHECK(nkref::same_bits(sc.mean(c), sd.mean(c)));
    CHECK(nkref::same_bits(sc.rstd(c), sd.rstd(c)));
    if (track) {
      CHECK(nkref::same_bits(clean.running_mean()(c), dirty.running_mean()(c)));
      CHECK(nkref::same_bits(clean.running_var()(c), dirty.running_var()(c)));
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm: a NaN or Inf makes its channel NaN and leaves the others bit-identical",
                   "[batch_norm][nonfinite]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (T bad : {nan, inf, -inf}) {
    nonfinite_check<T, 3, kRow>({4, 5, 6}, 1, bad, 1100);
    nonfinite_check<T, 3, kCol>({4, 5, 6}, 1, bad, 1110);
    nonfinite_check<T, 4, kRow>({2, 3, 7, 5}, 1, bad, 1120);
    nonfinite_check<T, 4, kCol>({2, 7, 5, 19}, -1, bad, 1130);
    nonfinite_check<T, 2, kRow>({40, 33}, 1, bad, 1140);
    nonfinite_check<T, 3, kCol>({4, 5, 6}, 1, bad, 1150, /*track=*/false);
  }
}

// ---------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("BatchNorm worked example 3 from the documents", "[batch_norm][example]", float, double) {
  using T = TestType;
  // X = [[5, 10, 15], [-5, -10, -15]] (features x samples); BatchNorm runs on X^T (3 samples x 2 features).
  const std::array<Index, 2> dims{3, 2};
  const Vec xt{5, -5, 10, -10, 15, -15};
  const Vec want{-1.4495, 3.4495, 1, 1, 3.4495, -1.4495};  // Y^T
  auto run = [&](auto layout_tag) {
    (void)layout_tag;
    constexpr int L = decltype(layout_tag)::value;
    BatchNormOptions o;
    o.eps = 1e-5;
    BatchNorm<T> bn(2, o);
    bn.weight().setConstant(T(2));
    bn.bias().setConstant(T(1));
    const auto f = run_forward<T, 2, L>(bn, dims, xt);
    REQUIRE(f.y.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) CHECK(std::abs(f.y[k] - want[k]) < 5e-5);
    REQUIRE(f.stats.mean.size() == 2);
    CHECK(std::abs(f.stats.mean(0) - 10) < 1e-4);
    CHECK(std::abs(f.stats.mean(1) + 10) < 1e-4);
    CHECK(std::abs(1 / f.stats.rstd(0) - 4.0825) < 5e-5);  // sigma = sqrt(16.6667 + 1e-5)
    CHECK(std::abs(1 / f.stats.rstd(1) - 4.0825) < 5e-5);
    // running: 0.9 * 0 + 0.1 * 10; 0.9 * 1 + 0.1 * 25 (unbiased: 50 / 2)
    CHECK(std::abs(bn.running_mean()(0) - T(1)) < 1e-5);
    CHECK(std::abs(bn.running_mean()(1) + T(1)) < 1e-5);
    CHECK(std::abs(bn.running_var()(0) - T(3.4)) < 1e-5);
    CHECK(std::abs(bn.running_var()(1) - T(3.4)) < 1e-5);
  };
  run(std::integral_constant<int, kRow>{});
  run(std::integral_constant<int, kCol>{});
}
