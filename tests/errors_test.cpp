// tests/errors_test.cpp — the contract's "Bad input" section for every functor (LayerNorm, RMSNorm,
// BatchNorm):
//   * dimension mismatches throw normkit::shape_error (a std::invalid_argument) whose what() names
//     the functor and gives the expected and the actual dimensions as "[2, 3]"; nothing is written to
//     the outputs (prefilled with a sentinel) and BatchNorm's running stats / counter do not move;
//   * invalid options throw std::invalid_argument, at construction or at the latest at the first
//     forward, with a message that names the option; the boundary values (eps = 0, momentum 0 and 1,
//     channel_axis = -R and R-1) are accepted.
#include <normkit/normkit.hpp>

#include "support/reference.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using nkref::Index;
using nkref::Vec;

constexpr int kRow = Eigen::RowMajor;
constexpr int kCol = Eigen::ColMajor;
constexpr double kSentinel = -777.0;

static_assert(std::is_base_of_v<std::invalid_argument, normkit::shape_error>,
              "shape_error must be catchable as std::invalid_argument");

template <class F>
struct Traits;
template <class T>
struct Traits<normkit::LayerNorm<T>> {
  using Scalar = T;
  using Options = normkit::LayerNormOptions;
  static constexpr const char* name = "LayerNorm";
  static constexpr bool has_mean = true;
};
template <class T>
struct Traits<normkit::RMSNorm<T>> {
  using Scalar = T;
  using Options = normkit::RMSNormOptions;
  static constexpr const char* name = "RMSNorm";
  static constexpr bool has_mean = false;
};

// Runs f; expects normkit::shape_error and returns its message ("" after a recorded failure).
template <class Fn>
std::string shape_error_message(Fn&& f) {
  try {
    f();
  } catch (const normkit::shape_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("expected normkit::shape_error, got another exception: " << e.what());
    return {};
  }
  FAIL_CHECK("expected normkit::shape_error, nothing was thrown");
  return {};
}

// Runs f; expects std::invalid_argument (any derived type) and returns its message.
template <class Fn>
std::string invalid_argument_message(Fn&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL_CHECK("expected std::invalid_argument, got another exception: " << e.what());
    return {};
  }
  FAIL_CHECK("expected std::invalid_argument, nothing was thrown");
  return {};
}

template <class TensorLike>
bool untouched(const TensorLike& t) {
  for (double v : nkref::to_rowmajor(t))
    if (v != kSentinel) return false;
  return true;
}

template <class S, int R, int L>
Eigen::Tensor<S, R, L> sentinel(const std::array<Index, static_cast<std::size_t>(R)>& dims) {
  return nkref::filled_tensor<S, R, L>(dims, static_cast<S>(kSentinel));
}

template <class S, int R, int L>
Eigen::Tensor<S, R, L> random_tensor(const std::array<Index, static_cast<std::size_t>(R)>& dims, std::uint64_t seed) {
  const auto dv = nkref::dims_vec(dims, R);
  return nkref::make_tensor<S, R, L>(dims, nkref::channel_input(dv, R - 1, seed));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm: dimension mismatches.

namespace {

template <class F, int L>
void row_norm_shape_errors() {
  using Tr = Traits<F>;
  using T = typename Tr::Scalar;
  const std::string name = Tr::name;
  INFO(name << ' ' << (L == kRow ? "RowMajor" : "ColMajor"));

  const auto x = random_tensor<T, 2, L>({2, 3}, 1);
  const auto dy = random_tensor<T, 2, L>({2, 3}, 2);

  {
    INFO("forward: y dims differ from x");
    F f(3);
    auto y = sentinel<T, 2, L>({2, 4});
    const auto msg = shape_error_message([&] { (void)f.forward(x, y); });
    CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[2, 4]"));
    CHECK(untouched(y));
    // also catchable as std::invalid_argument
    CHECK_THROWS_AS(f.forward(x, y), std::invalid_argument);
    // through a temporary TensorMap
    std::vector<T> ys(8, static_cast<T>(kSentinel));
    const auto msg2 = shape_error_message(
        [&] { (void)f.forward(x, Eigen::TensorMap<Eigen::Tensor<T, 2, L>>(ys.data(), 4, 2)); });
    CHECK_THAT(msg2, Contains(name) && Contains("[2, 3]") && Contains("[4, 2]"));
    for (T v : ys) CHECK(v == static_cast<T>(kSentinel));
    // y of another layout but wrong dims
    auto yo = sentinel<T, 2, (L == kRow ? kCol : kRow)>({3, 2});
    const auto msg3 = shape_error_message([&] { (void)f.forward(x, yo); });
    CHECK_THAT(msg3, Contains(name) && Contains("[2, 3]") && Contains("[3, 2]"));
    CHECK(untouched(yo));
  }
  {
    INFO("forward on a ThreadPoolDevice: y dims differ from x");
    Eigen::ThreadPool pool(2);
    Eigen::ThreadPoolDevice dev(&pool, 2);
    F f(3);
    auto y = sentinel<T, 2, L>({2, 4});
    const auto msg = shape_error_message([&] { (void)f.forward(dev, x, y); });
    CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[2, 4]"));
    CHECK(untouched(y));
  }
  {
    INFO("forward: trailing dims differ from normalized_shape");
    F f({3, 4});
    const auto x3 = random_tensor<T, 3, L>({2, 3, 5}, 3);
    auto y3 = sentinel<T, 3, L>({2, 3, 5});
    const auto msg = shape_error_message([&] { (void)f.forward(x3, y3); });
    // the actual dims may be given as the trailing part [3, 5] or as all of x, [2, 3, 5]
    CHECK_THAT(msg, Contains(name) && Contains("[3, 4]") && Contains("3, 5]"));
    CHECK(untouched(y3));
    // backward with the same mismatch
    const auto dy3 = random_tensor<T, 3, L>({2, 3, 5}, 4);
    auto dx3 = sentinel<T, 3, L>({2, 3, 5});
    normkit::NormStats<T> stats;
    stats.rstd.resize(2);
    stats.rstd.setConstant(1);
    if (Tr::has_mean) {
      stats.mean.resize(2);
      stats.mean.setZero();
    }
    const auto msgb = shape_error_message([&] { (void)f.backward(x3, dy3, stats, dx3); });
    CHECK_THAT(msgb, Contains(name) && Contains("[3, 4]") && Contains("3, 5]"));
    CHECK(untouched(dx3));
  }
  {
    INFO("forward: last dim differs from features");
    F f(4);
    auto y = sentinel<T, 2, L>({2, 3});
    const auto msg = shape_error_message([&] { (void)f.forward(x, y); });
    CHECK_THAT(msg, Contains(name) && Contains("[4]") && Contains("3]"));
    CHECK(untouched(y));
  }
  {
    INFO("forward: rank smaller than the normalized rank");
    F f({2, 3});
    const auto x1 = random_tensor<T, 1, L>({3}, 5);
    auto y1 = sentinel<T, 1, L>({3});
    const auto msg = shape_error_message([&] { (void)f.forward(x1, y1); });
    CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[3]"));
    CHECK(untouched(y1));
  }
  {
    INFO("backward: dy or dx dims differ from x");
    F f(3);
    auto y = sentinel<T, 2, L>({2, 3});
    const auto stats = f.forward(x, y);
    {
      const auto dyb = random_tensor<T, 2, L>({2, 4}, 6);
      auto dx = sentinel<T, 2, L>({2, 3});
      const auto msg = shape_error_message([&] { (void)f.backward(x, dyb, stats, dx); });
      CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[2, 4]"));
      CHECK(untouched(dx));
    }
    {
      auto dx = sentinel<T, 2, L>({3, 3});
      const auto msg = shape_error_message([&] { (void)f.backward(x, dy, stats, dx); });
      CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[3, 3]"));
      CHECK(untouched(dx));
    }
    {
      Eigen::ThreadPool pool(3);
      Eigen::ThreadPoolDevice dev(&pool, 3);
      auto dx = sentinel<T, 2, L>({3, 3});
      const auto msg = shape_error_message([&] { (void)f.backward(dev, x, dy, stats, dx); });
      CHECK_THAT(msg, Contains(name) && Contains("[2, 3]") && Contains("[3, 3]"));
      CHECK(untouched(dx));
    }
  }
  {
    INFO("backward: stats of the wrong size");
    F f(3);
    // stats of a 4-row batch given with a 2-row x
    const auto x4 = random_tensor<T, 2, L>({4, 3}, 7);
    auto y4 = sentinel<T, 2, L>({4, 3});
    const auto stats4 = f.forward(x4, y4);
    REQUIRE(stats4.rstd.size() == 4);
    auto dx = sentinel<T, 2, L>({2, 3});
    const auto msg = shape_error_message([&] { (void)f.backward(x, dy, stats4, dx); });
    CHECK_THAT(msg, Contains(name) && Contains("[2]") && Contains("[4]"));
    CHECK(untouched(dx));

    auto y = sentinel<T, 2, L>({2, 3});
    auto good = f.forward(x, y);
    if (Tr::has_mean) {  // LayerNorm: rstd right, mean wrong
      auto bad = good;
      bad.mean.resize(5);
      bad.mean.setZero();
      const auto msgm = shape_error_message([&] { (void)f.backward(x, dy, bad, dx); });
      CHECK_THAT(msgm, Contains(name) && Contains("[2]") && Contains("[5]"));
      CHECK(untouched(dx));
    }
    {  // rstd wrong, mean right
      auto bad = good;
      bad.rstd.resize(1);
      bad.rstd.setConstant(1);
      const auto msgr = shape_error_message([&] { (void)f.backward(x, dy, bad, dx); });
      CHECK_THAT(msgr, Contains(name) && Contains("[2]") && Contains("[1]"));
      CHECK(untouched(dx));
    }
    // and the good stats work
    CHECK_NOTHROW(f.backward(x, dy, good, dx));
    CHECK_FALSE(untouched(dx));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("LayerNorm / RMSNorm dimension mismatches throw shape_error and write nothing", "[errors]",
                   normkit::LayerNorm<float>, normkit::LayerNorm<double>, normkit::RMSNorm<float>,
                   normkit::RMSNorm<double>) {
  row_norm_shape_errors<TestType, kRow>();
  row_norm_shape_errors<TestType, kCol>();
}

// ---------------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm: invalid options.

namespace {

// Constructs the functor and runs one forward on a matching (2, features...) input; returns the
// invalid_argument message and checks that y was not written.
template <class F, class Make>
std::string row_norm_option_error(Make&& make, std::array<Index, 3> dims) {
  using T = typename Traits<F>::Scalar;
  auto x = random_tensor<T, 3, kRow>(dims, 9);
  auto y = sentinel<T, 3, kRow>(dims);
  const auto msg = invalid_argument_message([&] {
    F f = make();
    (void)f.forward(x, y);
  });
  CHECK(untouched(y));
  return msg;
}

}  // namespace

TEMPLATE_TEST_CASE("LayerNorm / RMSNorm reject invalid options and accept the boundary values", "[errors][options]",
                   normkit::LayerNorm<float>, normkit::LayerNorm<double>, normkit::RMSNorm<float>,
                   normkit::RMSNorm<double>) {
  using F = TestType;
  using Tr = Traits<F>;
  using T = typename Tr::Scalar;
  using O = typename Tr::Options;
  const std::string name = Tr::name;

  for (double eps : {-1e-5, -1.0, std::numeric_limits<double>::quiet_NaN(), -std::numeric_limits<double>::infinity()}) {
    INFO(name << " eps = " << eps);
    for (auto placement : {normkit::EpsPlacement::InsideSqrt, normkit::EpsPlacement::OutsideSqrt}) {
      O o;
      o.eps = eps;
      o.eps_placement = placement;
      const auto msg = row_norm_option_error<F>([&] { return F(4, o); }, {2, 3, 4});
      CHECK_THAT(msg, Contains("eps"));
      const auto msg2 = row_norm_option_error<F>([&] { return F({3, 4}, o); }, {2, 3, 4});
      CHECK_THAT(msg2, Contains("eps"));
    }
  }

  SECTION("zero-sized normalized_shape") {
    // the message names the option: "normalized_shape" (or "features" for the one-axis constructor)
    CHECK_THAT(row_norm_option_error<F>([&] { return F(0); }, {2, 3, 0}),
               Contains("normalized_shape") || Contains("features"));
    CHECK_THAT(row_norm_option_error<F>(
                   [&] {
      return F({3, 0});
                   },
                   {2, 3, 0}),
               Contains("normalized_shape") || Contains("features"));
    CHECK_THAT(row_norm_option_error<F>(
                   [&] {
      return F({0, 4});
                   },
                   {2, 0, 4}),
               Contains("normalized_shape") || Contains("features"));
    // no axis at all: nothing to normalize over (PyTorch: "at least 1-dimensional")
    CHECK_THAT(row_norm_option_error<F>([&] { return F(std::initializer_list<Index>{}); }, {2, 3, 4}),
               Contains("normalized_shape"));
  }

  SECTION("eps = 0 is valid") {
    O o;
    o.eps = 0.0;
    for (auto placement : {normkit::EpsPlacement::InsideSqrt, normkit::EpsPlacement::OutsideSqrt}) {
      o.eps_placement = placement;
      F f(4, o);
      const auto x = random_tensor<T, 2, kRow>({3, 4}, 10);
      auto y = sentinel<T, 2, kRow>({3, 4});
      CHECK_NOTHROW(f.forward(x, y));
      for (double v : nkref::to_rowmajor(y)) {
        CHECK(std::isfinite(v));
        CHECK(v != kSentinel);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// BatchNorm: dimension mismatches.

namespace {

template <class T>
struct BnState {
  Vec rm, rv;
  std::int64_t nbt;
  bool training;
  explicit BnState(normkit::BatchNorm<T>& bn)
      : rm(nkref::vec1(bn.running_mean())), rv(nkref::vec1(bn.running_var())), nbt(bn.num_batches_tracked()),
        training(bn.training()) {}
  bool operator==(const BnState& o) const { return rm == o.rm && rv == o.rv && nbt == o.nbt && training == o.training; }
};

template <class T, int L>
void batch_norm_shape_errors(bool training) {
  using BN = normkit::BatchNorm<T>;
  INFO("BatchNorm " << (L == kRow ? "RowMajor" : "ColMajor") << (training ? " training" : " eval"));
  const auto x = random_tensor<T, 3, L>({2, 3, 4}, 11);
  const auto dy = random_tensor<T, 3, L>({2, 3, 4}, 12);

  BN bn(3);
  {  // one good training batch so that the state is not the initial one
    auto y = sentinel<T, 3, L>({2, 3, 4});
    (void)bn.forward(random_tensor<T, 3, L>({2, 3, 4}, 13), y);
  }
  bn.train(training);
  const BnState<T> before(bn);

  {
    INFO("forward: y dims differ from x");
    auto y = sentinel<T, 3, L>({2, 3, 5});
    const auto msg = shape_error_message([&] { (void)bn.forward(x, y); });
    CHECK_THAT(msg, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[2, 3, 5]"));
    CHECK(untouched(y));
    CHECK(BnState<T>(bn) == before);
    CHECK_THROWS_AS(bn.forward(x, y), std::invalid_argument);
    CHECK(BnState<T>(bn) == before);

    Eigen::ThreadPool pool(2);
    Eigen::ThreadPoolDevice dev(&pool, 2);
    const auto msgd = shape_error_message([&] { (void)bn.forward(dev, x, y); });
    CHECK_THAT(msgd, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[2, 3, 5]"));
    CHECK(untouched(y));
    CHECK(BnState<T>(bn) == before);

    std::vector<T> ys(24, static_cast<T>(kSentinel));
    const auto msgm = shape_error_message(
        [&] { (void)bn.forward(x, Eigen::TensorMap<Eigen::Tensor<T, 3, L>>(ys.data(), 2, 4, 3)); });
    CHECK_THAT(msgm, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[2, 4, 3]"));
    for (T v : ys) CHECK(v == static_cast<T>(kSentinel));
    CHECK(BnState<T>(bn) == before);
  }
  {
    INFO("forward: channel count differs from num_features");
    const auto x4 = random_tensor<T, 3, L>({2, 4, 5}, 14);
    auto y4 = sentinel<T, 3, L>({2, 4, 5});
    const auto msg = shape_error_message([&] { (void)bn.forward(x4, y4); });
    // expected 3 channels, actual 4 (x is [2, 4, 5])
    CHECK_THAT(msg, Contains("BatchNorm") && Contains("[2, 4, 5]") && Contains("3"));
    CHECK(untouched(y4));
    CHECK(BnState<T>(bn) == before);
  }
  {
    INFO("forward: channels-last channel count differs from num_features");
    normkit::BatchNormOptions o;
    o.channel_axis = -1;
    BN last(3, o);
    last.train(training);
    const BnState<T> b0(last);
    const auto xl = random_tensor<T, 3, L>({2, 5, 4}, 15);
    auto yl = sentinel<T, 3, L>({2, 5, 4});
    const auto msg = shape_error_message([&] { (void)last.forward(xl, yl); });
    CHECK_THAT(msg, Contains("BatchNorm") && Contains("[2, 5, 4]") && Contains("3"));
    CHECK(untouched(yl));
    CHECK(BnState<T>(last) == b0);
  }
  {
    INFO("forward: rank 1 (BatchNorm needs rank >= 2)");
    const auto x1 = random_tensor<T, 1, L>({3}, 16);
    auto y1 = sentinel<T, 1, L>({3});
    const auto msg = shape_error_message([&] { (void)bn.forward(x1, y1); });
    CHECK_THAT(msg, Contains("BatchNorm") && Contains("[3]"));
    CHECK(untouched(y1));
    CHECK(BnState<T>(bn) == before);
  }
  {
    INFO("backward: dy or dx dims differ from x, stats of the wrong size");
    auto y = sentinel<T, 3, L>({2, 3, 4});
    // a forward in eval mode changes nothing; in training it counts one more batch
    const auto stats = bn.forward(x, y);
    const BnState<T> after(bn);
    {
      const auto dyb = random_tensor<T, 3, L>({2, 3, 5}, 17);
      auto dx = sentinel<T, 3, L>({2, 3, 4});
      const auto msg = shape_error_message([&] { (void)bn.backward(x, dyb, stats, dx); });
      CHECK_THAT(msg, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[2, 3, 5]"));
      CHECK(untouched(dx));
    }
    {
      auto dx = sentinel<T, 3, L>({1, 3, 4});
      const auto msg = shape_error_message([&] { (void)bn.backward(x, dy, stats, dx); });
      CHECK_THAT(msg, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[1, 3, 4]"));
      CHECK(untouched(dx));
      Eigen::ThreadPool pool(3);
      Eigen::ThreadPoolDevice dev(&pool, 3);
      const auto msgd = shape_error_message([&] { (void)bn.backward(dev, x, dy, stats, dx); });
      CHECK_THAT(msgd, Contains("BatchNorm") && Contains("[2, 3, 4]") && Contains("[1, 3, 4]"));
      CHECK(untouched(dx));
    }
    {  // channel count of x differs from num_features in backward too
      const auto x4 = random_tensor<T, 3, L>({2, 4, 5}, 18);
      const auto dy4 = random_tensor<T, 3, L>({2, 4, 5}, 19);
      auto dx4 = sentinel<T, 3, L>({2, 4, 5});
      const auto msg = shape_error_message([&] { (void)bn.backward(x4, dy4, stats, dx4); });
      CHECK_THAT(msg, Contains("BatchNorm") && Contains("3") && Contains("4"));
      CHECK(untouched(dx4));
    }
    auto dx = sentinel<T, 3, L>({2, 3, 4});
    {
      auto bad = stats;
      bad.rstd.resize(4);
      bad.rstd.setConstant(1);
      const auto msg = shape_error_message([&] { (void)bn.backward(x, dy, bad, dx); });
      CHECK_THAT(msg, Contains("BatchNorm") && Contains("[3]") && Contains("[4]"));
      CHECK(untouched(dx));
    }
    {
      auto bad = stats;
      bad.mean.resize(2);
      bad.mean.setZero();
      const auto msg = shape_error_message([&] { (void)bn.backward(x, dy, bad, dx); });
      CHECK_THAT(msg, Contains("BatchNorm") && Contains("[3]") && Contains("[2]"));
      CHECK(untouched(dx));
    }
    CHECK(BnState<T>(bn) == after);
    // the good call still works
    CHECK_NOTHROW(bn.backward(x, dy, stats, dx));
    CHECK_FALSE(untouched(dx));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm dimension mismatches throw shape_error and change nothing", "[errors]", float, double) {
  for (bool training : {true, false}) {
    batch_norm_shape_errors<TestType, kRow>(training);
    batch_norm_shape_errors<TestType, kCol>(training);
  }
}

// ---------------------------------------------------------------------------------------------------
// BatchNorm: invalid options.

namespace {

// Constructs BatchNorm(C, o) and runs one training forward on x of `dims` (the channel at o's
// channel_axis when that is in range); returns the invalid_argument message. y must stay unwritten.
template <class T, int R>
std::string batch_norm_option_error(const normkit::BatchNormOptions& o, Index C,
                                    std::array<Index, static_cast<std::size_t>(R)> dims) {
  auto x = random_tensor<T, R, kRow>(dims, 20);
  auto y = sentinel<T, R, kRow>(dims);
  const auto msg = invalid_argument_message([&] {
    normkit::BatchNorm<T> bn(C, o);
    (void)bn.forward(x, y);
  });
  CHECK(untouched(y));
  return msg;
}

// The same, but the functor outlives the throw: its state must not change.
template <class T, int R>
std::string batch_norm_axis_error(Index channel_axis, Index C, std::array<Index, static_cast<std::size_t>(R)> dims) {
  normkit::BatchNormOptions o;
  o.channel_axis = channel_axis;
  std::string msg;
  auto x = random_tensor<T, R, kRow>(dims, 21);
  auto y = sentinel<T, R, kRow>(dims);
  bool constructed = false;
  try {
    normkit::BatchNorm<T> bn(C, o);
    constructed = true;
    msg = invalid_argument_message([&] { (void)bn.forward(x, y); });
    CHECK(bn.num_batches_tracked() == 0);
    CHECK(nkref::vec1(bn.running_mean()) == Vec(static_cast<std::size_t>(C), 0.0));
    CHECK(nkref::vec1(bn.running_var()) == Vec(static_cast<std::size_t>(C), 1.0));
    // eval mode rejects it too
    bn.eval();
    const auto msg2 = invalid_argument_message([&] { (void)bn.forward(x, y); });
    CHECK_THAT(msg2, Contains("channel_axis"));
  } catch (const std::invalid_argument& e) {
    CHECK_FALSE(constructed);
    msg = e.what();
  }
  CHECK(untouched(y));
  return msg;
}

}  // namespace

TEMPLATE_TEST_CASE("BatchNorm rejects invalid options and accepts the boundary values", "[errors][options]", float,
                   double) {
  using T = TestType;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();

  SECTION("eps < 0 or NaN") {
    for (double eps : {-1e-5, -1.0, nan, -inf}) {
      INFO("eps = " << eps);
      normkit::BatchNormOptions o;
      o.eps = eps;
      CHECK_THAT((batch_norm_option_error<T, 3>(o, 3, {4, 3, 2})), Contains("eps"));
    }
  }
  SECTION("momentum NaN or outside [0, 1]") {
    for (double m : {nan, -0.1, -1e-9, 1.0000001, 1.5, inf, -inf}) {
      INFO("momentum = " << m);
      normkit::BatchNormOptions o;
      o.momentum = m;
      CHECK_THAT((batch_norm_option_error<T, 3>(o, 3, {4, 3, 2})), Contains("momentum"));
    }
  }
  SECTION("channel_axis outside [-R, R)") {
    CHECK_THAT((batch_norm_axis_error<T, 2>(2, 3, {4, 3})), Contains("channel_axis"));
    CHECK_THAT((batch_norm_axis_error<T, 2>(-3, 3, {4, 3})), Contains("channel_axis"));
    CHECK_THAT((batch_norm_axis_error<T, 3>(3, 3, {4, 3, 2})), Contains("channel_axis"));
    CHECK_THAT((batch_norm_axis_error<T, 4>(4, 3, {4, 3, 2, 2})), Contains("channel_axis"));
    CHECK_THAT((batch_norm_axis_error<T, 4>(-5, 3, {4, 3, 2, 2})), Contains("channel_axis"));
    CHECK_THAT((batch_norm_axis_error<T, 4>(100, 3, {4, 3, 2, 2})), Contains("channel_axis"));
  }
  SECTION("boundary values are valid") {
    auto works = [](const normkit::BatchNormOptions& o, Index C, auto dims) {
      constexpr int R = static_cast<int>(std::tuple_size<decltype(dims)>::value);
      normkit::BatchNorm<T> bn(C, o);
      const int axis = nkref::normalize_axis(o.channel_axis, R);
      const auto dv = nkref::dims_vec(dims, R);
      const auto x = nkref::make_tensor<T, R, kRow>(dims, nkref::channel_input(dv, axis, 22));
      auto y = sentinel<T, R, kRow>(dims);
      CHECK_NOTHROW(bn.forward(x, y));
      for (double v : nkref::to_rowmajor(y)) {
        CHECK(std::isfinite(v));
        CHECK(v != kSentinel);
      }
      CHECK(bn.num_batches_tracked() == 1);
    };
    normkit::BatchNormOptions o;
    o.eps = 0.0;
    works(o, 3, std::array<Index, 3>{4, 3, 2});
    o = {};
    o.momentum = 0.0;
    works(o, 3, std::array<Index, 3>{4, 3, 2});
    o.momentum = 1.0;
    works(o, 3, std::array<Index, 3>{4, 3, 2});
    o = {};
    o.channel_axis = -2;  // = 0 on rank 2: the channels are the rows
    works(o, 3, std::array<Index, 2>{3, 4});
    o.channel_axis = 0;
    works(o, 3, std::array<Index, 2>{3, 4});
    o.channel_axis = -4;  // = 0 on rank 4
    works(o, 3, std::array<Index, 4>{3, 2, 2, 2});
    o.channel_axis = 3;  // = -1 on rank 4
    works(o, 3, std::array<Index, 4>{2, 2, 2, 3});
  }
}

// ---------------------------------------------------------------------------------------------------
// Parameters resized, emptied or added after construction (weight() etc. are mutable references):
// every forward and backward checks their sizes before anything is written. A wrong size used to be
// read out of bounds (AddressSanitizer: heap-buffer-overflow), an emptied bias silently dropped.

namespace {

template <class F, class Mutate>
void row_norm_param_error(const typename Traits<F>::Options& o, const char* param, Mutate&& mutate) {
  using T = typename Traits<F>::Scalar;
  INFO(Traits<F>::name << ": " << param << " changed after construction");
  const auto x = random_tensor<T, 2, kRow>({2, 8}, 30);
  const auto dy = random_tensor<T, 2, kRow>({2, 8}, 31);
  F f(8, o);
  auto y = sentinel<T, 2, kRow>({2, 8});
  const normkit::NormStats<T> stats = f.forward(x, y);
  mutate(f);
  y = sentinel<T, 2, kRow>({2, 8});
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice dev(&pool, 2);
  for (const auto& msg : {shape_error_message([&] { (void)f.forward(x, y); }),
                          shape_error_message([&] { (void)f.forward(dev, x, y); })}) {
    CHECK_THAT(msg, Contains(Traits<F>::name) && Contains(std::string(param) + "()") && Contains("forward"));
  }
  CHECK(untouched(y));
  auto dx = sentinel<T, 2, kRow>({2, 8});
  const auto msgb = shape_error_message([&] { (void)f.backward(x, dy, stats, dx); });
  CHECK_THAT(msgb, Contains(Traits<F>::name) && Contains(std::string(param) + "()") && Contains("backward"));
  CHECK(untouched(dx));
}

}  // namespace

TEMPLATE_TEST_CASE("LayerNorm / RMSNorm: a resized, emptied or added parameter throws shape_error", "[errors][params]",
                   normkit::LayerNorm<float>, normkit::RMSNorm<double>) {
  using F = TestType;
  using T = typename Traits<F>::Scalar;
  using O = typename Traits<F>::Options;
  O with_bias;
  with_bias.bias = true;
  O no_bias;
  no_bias.bias = false;
  O no_affine;
  no_affine.elementwise_affine = false;
  row_norm_param_error<F>(with_bias, "weight", [](F& f) { f.weight() = Eigen::Tensor<T, 1>(4); });
  row_norm_param_error<F>(with_bias, "weight", [](F& f) { f.weight() = Eigen::Tensor<T, 1>(9); });
  row_norm_param_error<F>(with_bias, "weight", [](F& f) { f.weight() = Eigen::Tensor<T, 1>(); });
  row_norm_param_error<F>(with_bias, "bias", [](F& f) { f.bias() = Eigen::Tensor<T, 1>(3); });
  row_norm_param_error<F>(with_bias, "bias", [](F& f) { f.bias() = Eigen::Tensor<T, 1>(); });  // not "no bias"
  row_norm_param_error<F>(no_bias, "bias", [](F& f) { f.bias() = Eigen::Tensor<T, 1>(8); });   // cannot be added
  row_norm_param_error<F>(no_affine, "weight", [](F& f) { f.weight() = Eigen::Tensor<T, 1>(8); });
  {  // the message says which way it went
    F f(8, with_bias);
    f.bias() = Eigen::Tensor<T, 1>();
    const auto x = random_tensor<T, 2, kRow>({2, 8}, 32);
    auto y = sentinel<T, 2, kRow>({2, 8});
    CHECK_THAT(shape_error_message([&] { (void)f.forward(x, y); }), Contains("[0]") && Contains("[8]"));
  }
}

TEMPLATE_TEST_CASE("BatchNorm: a resized, emptied or added parameter throws shape_error and changes no state",
                   "[errors][params]", float, double) {
  using T = TestType;
  using BN = normkit::BatchNorm<T>;
  const auto x = random_tensor<T, 3, kRow>({4, 3, 5}, 40);
  const auto dy = random_tensor<T, 3, kRow>({4, 3, 5}, 41);
  const auto check = [&](normkit::BatchNormOptions o, const char* param, auto&& mutate) {
    for (bool training : {true, false}) {
      INFO("BatchNorm: " << param << " changed after construction, training = " << training);
      BN bn(3, o);
      auto y = sentinel<T, 3, kRow>({4, 3, 5});
      const normkit::NormStats<T> stats = bn.forward(x, y);
      bn.train(training);
      mutate(bn);
      const auto mean_before = nkref::vec1(bn.running_mean());
      const auto count_before = bn.num_batches_tracked();
      y = sentinel<T, 3, kRow>({4, 3, 5});
      CHECK_THAT(shape_error_message([&] { (void)bn.forward(x, y); }),
                 Contains("BatchNorm::forward") && Contains(std::string(param) + "()"));
      CHECK(untouched(y));
      CHECK(nkref::vec1(bn.running_mean()) == mean_before);
      CHECK(bn.num_batches_tracked() == count_before);
      auto dx = sentinel<T, 3, kRow>({4, 3, 5});
      CHECK_THAT(shape_error_message([&] { (void)bn.backward(x, dy, stats, dx); }),
                 Contains("BatchNorm::backward") && Contains(std::string(param) + "()"));
      CHECK(untouched(dx));
    }
  };
  normkit::BatchNormOptions plain;
  normkit::BatchNormOptions untracked;
  untracked.track_running_stats = false;
  normkit::BatchNormOptions no_affine;
  no_affine.affine = false;
  check(plain, "weight", [](BN& bn) { bn.weight() = Eigen::Tensor<T, 1>(2); });
  check(plain, "bias", [](BN& bn) { bn.bias() = Eigen::Tensor<T, 1>(); });
  check(plain, "running_mean", [](BN& bn) { bn.running_mean() = Eigen::Tensor<T, 1>(7); });
  check(plain, "running_var", [](BN& bn) { bn.running_var() = Eigen::Tensor<T, 1>(); });
  check(untracked, "running_var", [](BN& bn) { bn.running_var() = Eigen::Tensor<T, 1>(3); });
  check(no_affine, "weight", [](BN& bn) { bn.weight() = Eigen::Tensor<T, 1>(3); });
}

// ---------------------------------------------------------------------------------------------------
// Messages a person can act on.

TEST_CASE("Option errors print the number as given, and stats from the other functor are named", "[errors][messages]") {
  CHECK_THAT(invalid_argument_message([] { normkit::RMSNorm<float> f(8, {-1e-9}); }), Contains("-1e-09"));
  normkit::BatchNormOptions o;
  o.momentum = -1e-9;
  CHECK_THAT(invalid_argument_message([&] { normkit::BatchNorm<float> bn(3, o); }), Contains("-1e-09"));

  // A normalized_shape known at run time needs no options argument.
  const normkit::LayerNorm<float> ln(std::vector<Index>{2, 3});
  const normkit::RMSNorm<float> rms(std::vector<Index>{2, 3});
  CHECK(ln.normalized_shape() == std::vector<Index>{2, 3});

  const auto x = random_tensor<float, 3, kRow>({6, 2, 3}, 50);
  const auto dy = random_tensor<float, 3, kRow>({6, 2, 3}, 51);
  Eigen::Tensor<float, 3, kRow> y(6, 2, 3);
  auto dx = sentinel<float, 3, kRow>({6, 2, 3});
  const auto ln_stats = ln.forward(x, y), rms_stats = rms.forward(x, y);
  CHECK_THAT(shape_error_message([&] { (void)rms.backward(x, dy, ln_stats, dx); }),
             Contains("RMSNorm::backward") && Contains("stats.mean") && Contains("LayerNorm"));
  CHECK_THAT(shape_error_message([&] { (void)ln.backward(x, dy, rms_stats, dx); }),
             Contains("LayerNorm::backward") && Contains("stats.mean") && Contains("RMSNorm"));
  CHECK(untouched(dx));
}
