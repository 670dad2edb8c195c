// tests/state_test.cpp — state_dict / load_state_dict and the parameter setters (state.hpp).
//
// A functor restored from another's state continues bit for bit as the original (a cumulative-
// average BatchNorm needs num_batches_tracked for that); every size, key and count is checked before
// anything is assigned, so a failed load or set changes nothing.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Catch::Matchers::Contains;
using Eigen::Index;

template <class T, int R>
Eigen::Tensor<T, R, Eigen::RowMajor> ramp(const std::array<Index, static_cast<std::size_t>(R)>& dims, double scale,
                                          double offset) {
  Eigen::Tensor<T, R, Eigen::RowMajor> t(dims);
  for (Index i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<T>(offset + scale * std::sin(0.7 * double(i) + offset));
  return t;
}

template <class T>
bool same_bits(const Eigen::Tensor<T, 1>& a, const Eigen::Tensor<T, 1>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(T) * std::size_t(a.size())) == 0;
}

template <class T>
std::vector<T> values(const Eigen::Tensor<T, 1>& t) {
  return std::vector<T>(t.data(), t.data() + t.size());
}

}  // namespace

TEST_CASE("BatchNorm restored from state_dict continues bit for bit (cumulative average)", "[state]") {
  normkit::BatchNormOptions o;
  o.momentum = std::nullopt;  // the factor is 1/num_batches_tracked: the counter is part of the state
  normkit::BatchNorm<float> a(3, o);
  a.set_weight({0.5f, 1.5f, -2.f});
  a.set_bias(std::vector<float>{0.25f, 0.f, 1.f});
  Eigen::Tensor<float, 3, Eigen::RowMajor> y(4, 3, 5);
  for (int step = 0; step < 3; ++step) a.forward(ramp<float, 3>({4, 3, 5}, 1 + step, 0.1 * step), y);
  REQUIRE(a.num_batches_tracked() == 3);

  const normkit::StateDict<float> s = a.state_dict();
  REQUIRE(s.tensors.size() == 4);
  REQUIRE(s.num_batches_tracked == 3);
  CHECK(values(s.tensors.at("weight")) == std::vector<float>{0.5f, 1.5f, -2.f});

  normkit::BatchNorm<float> b(3, o);
  b.load_state_dict(s);
  CHECK(b.num_batches_tracked() == 3);
  const auto x = ramp<float, 3>({4, 3, 5}, 3, 0.7);
  Eigen::Tensor<float, 3, Eigen::RowMajor> ya(4, 3, 5), yb(4, 3, 5);
  a.forward(x, ya);
  b.forward(x, yb);
  CHECK(same_bits(a.running_mean(), b.running_mean()));
  CHECK(same_bits(a.running_var(), b.running_var()));
  // Without the counter the next update would differ (factor 1/1 instead of 1/4): the test can fail.
  normkit::BatchNorm<float> c(3, o);
  normkit::StateDict<float> without = s;
  without.num_batches_tracked = 0;
  c.load_state_dict(without);
  c.forward(x, yb);
  CHECK_FALSE(same_bits(a.running_mean(), c.running_mean()));

  // set_num_batches_tracked is the setter for the counter alone.
  c.set_num_batches_tracked(4);
  CHECK(c.num_batches_tracked() == 4);
  CHECK_THROWS_AS(c.set_num_batches_tracked(-1), std::invalid_argument);
}

TEST_CASE("state_dict holds only the parameters the functor has, in PyTorch's names", "[state]") {
  CHECK(normkit::LayerNorm<float>(4).state_dict().tensors.size() == 2);
  normkit::RMSNorm<float> rms(4);
  const auto rs = rms.state_dict();
  CHECK(rs.tensors.size() == 1);
  CHECK(rs.tensors.count("weight") == 1);
  CHECK_FALSE(rs.num_batches_tracked);
  normkit::BatchNormOptions o;
  o.affine = false;
  const auto bs = normkit::BatchNorm<double>(2, o).state_dict();
  CHECK(bs.tensors.count("running_mean") == 1);
  CHECK(bs.tensors.count("weight") == 0);
  CHECK(bs.num_batches_tracked == 0);
  o.track_running_stats = false;
  const auto none = normkit::BatchNorm<double>(2, o).state_dict();
  CHECK(none.tensors.empty());
  CHECK_FALSE(none.num_batches_tracked);
}

TEST_CASE("load_state_dict checks sizes and keys before assigning anything", "[state][errors]") {
  normkit::LayerNorm<float> ln({2, 3});
  ln.set_weight({1, 2, 3, 4, 5, 6});
  const auto before = ln.state_dict();

  normkit::StateDict<float> bad = before;
  bad.tensors["bias"] = Eigen::Tensor<float, 1>(6).setConstant(9.f);    // valid
  bad.tensors["weight"] = Eigen::Tensor<float, 1>(5).setConstant(7.f);  // wrong size
  try {
    ln.load_state_dict(bad);
    FAIL("no exception");
  } catch (const normkit::shape_error& e) {
    CHECK_THAT(std::string(e.what()),
               Contains("LayerNorm::load_state_dict") && Contains("weight") && Contains("[5]") && Contains("[6]"));
  }
  CHECK(same_bits(ln.weight(), before.tensors.at("weight")));
  CHECK(same_bits(ln.bias(), before.tensors.at("bias")));  // not half-loaded

  normkit::StateDict<float> partial;
  partial.tensors["weight"] = Eigen::Tensor<float, 1>(6).setConstant(3.f);
  partial.tensors["gamma"] = Eigen::Tensor<float, 1>(6).setConstant(3.f);
  try {
    ln.load_state_dict(partial);
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK_THAT(std::string(e.what()), Contains("missing: [bias]") && Contains("unexpected: [gamma]"));
  }
  CHECK(same_bits(ln.weight(), before.tensors.at("weight")));
  // strict = false loads what is there and ignores the rest, as PyTorch's strict=False
  ln.load_state_dict(partial, /*strict=*/false);
  CHECK(values(ln.weight()) == std::vector<float>(6, 3.f));
  CHECK(same_bits(ln.bias(), before.tensors.at("bias")));

  normkit::BatchNorm<float> bn(2);
  auto bs = bn.state_dict();
  bs.num_batches_tracked.reset();
  CHECK_THROWS_WITH(bn.load_state_dict(bs), Contains("num_batches_tracked"));
  bs.num_batches_tracked = -3;
  CHECK_THROWS_WITH(bn.load_state_dict(bs), Contains("num_batches_tracked"));
}

TEST_CASE("The setters check the size and refuse absent parameters", "[state][errors]") {
  normkit::RMSNorm<double> rms(3);
  const std::vector<double> w{1, 2, 3};
  rms.set_weight(w.data(), 3);
  CHECK(values(rms.weight()) == w);
  CHECK_THROWS_AS(rms.set_weight(w.data(), 2), normkit::shape_error);
  CHECK_THROWS_WITH(rms.set_weight(std::vector<double>{1, 2, 3, 4}), Contains("RMSNorm::set_weight") && Contains("4"));
  CHECK(values(rms.weight()) == w);
  CHECK_THROWS_WITH(rms.set_bias(w), Contains("no bias"));  // RMSNorm has no bias by default
  CHECK(rms.bias().size() == 0);

  normkit::BatchNorm<float> bn(2);
  bn.set_running_var({4.f, 9.f});
  CHECK(values(bn.running_var()) == std::vector<float>{4.f, 9.f});
  CHECK_THROWS_AS(bn.set_running_mean({1.f}), normkit::shape_error);
  normkit::BatchNormOptions untracked;
  untracked.track_running_stats = false;
  normkit::BatchNorm<float> bu(2, untracked);
  CHECK_THROWS_WITH(bu.set_running_mean({1.f, 2.f}), Contains("no running_mean"));
  CHECK_THROWS_AS(bu.set_num_batches_tracked(1), std::invalid_argument);
}
