// Residual add + norm (LayerNorm/RMSNorm forward_add, backward_add) and the weight offset, against
// the contract (v2, "Residual add + norm", "Weight offset"):
//   forward_add   h = x + alpha * residual rounded once to T (within one rounding of the float64
//                 sum); y and stats bit for bit forward(h); h over x or residual, y over x alike.
//   backward_add  float/double: dx bit for bit backward(h, dy) then dx += dh; bfloat16: one rounding
//                 of the sum; dh of size 0 = backward; dx over dy or dh alike; parameter gradients
//                 those of backward; on a thread pool the same bits.
//                 All of it for float, double, bfloat16 and half (P = float beside 16-bit T), rank 2
//                 and rank 3 (one and two normalized axes), RowMajor and ColMajor.
//   gradients     finite differences in double of L = sum(y * dy) + sum(h * dh) (and without dh):
//                 dL/dx = dx and dL/dresidual = alpha * dx, for alpha != 1.
//   errors        a wrong residual, h, y, dh or dx throws shape_error naming it, before any write.
//   weight_offset y = xhat * (offset + weight) + bias with the sum in accum_t (1 + 2^-8 survives a
//                 bfloat16 weight), dx with g = dy * (offset + weight), dweight unchanged in meaning.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using Eigen::Index;

template <class Tensor, class Dims>
Tensor random_tensor(const Dims& dims, std::uint32_t seed, float offset, float spread = 1.f) {
  Tensor t(dims);
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(offset, spread);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<typename Tensor::Scalar>(dist(gen));
  return t;
}

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  return a.size() == b.size() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * std::size_t(a.size())) == 0);
}

template <class T>
double ulp_of(double v) {
  return v == 0 ? std::numeric_limits<double>::denorm_min()
                : std::ldexp(1.0, std::ilogb(v) - std::numeric_limits<T>::digits + 1);
}

// One functor type, one layout, one rank: every property of forward_add/backward_add above.
template <class Norm, class T, int Layout, std::size_t Rank>
void check_residual(const Norm& norm, const Eigen::array<Index, Rank>& shape, float alpha_f) {
  using Tensor = Eigen::Tensor<T, static_cast<int>(Rank), Layout>;
  using A = normkit::accum_t<T>;
  const typename Tensor::Dimensions dims(shape);
  const Tensor x = random_tensor<Tensor>(dims, 1, 0.5f), r = random_tensor<Tensor>(dims, 2, -1.f, 2.f);
  const Tensor dy = random_tensor<Tensor>(dims, 3, 0.f), dh = random_tensor<Tensor>(dims, 4, 0.f, 0.3f);
  const double alpha = alpha_f;
  Tensor h(dims), y(dims);
  const auto stats = norm.forward_add(x, r, h, y, alpha);
  // The sum formed in accum_t and rounded to T. With FMA only the sum is rounded (half an ulp of h);
  // without FMA (SSE4.2) the product alpha*r is rounded first, and that error is half an ulp of the
  // product, which under cancellation (x ~ -alpha*r) is many ulps of h: the bound carries both terms.
  for (Index i = 0; i < x.size(); ++i) {
    const double product = double(static_cast<A>(alpha)) * double(r.data()[i]);
    const double want = double(x.data()[i]) + product;
    REQUIRE(std::abs(double(h.data()[i]) - want) <= ulp_of<A>(std::abs(product)) + ulp_of<T>(want));
  }
  Tensor y_plain(dims);
  const auto stats_plain = norm.forward(h, y_plain);
  CHECK(same_bits(y, y_plain));
  CHECK(same_bits(stats.rstd, stats_plain.rstd));
  CHECK(same_bits(stats.mean, stats_plain.mean));
  CHECK(same_bits(stats.mean_lo, stats_plain.mean_lo));

  // Overlays: h over x, h over residual, y over x.
  Tensor hx = x, y2(dims);
  norm.forward_add(hx, r, hx, y2, alpha);
  CHECK(same_bits(hx, h));
  CHECK(same_bits(y2, y));
  Tensor hr = r;
  norm.forward_add(x, hr, hr, y2, alpha);
  CHECK(same_bits(hr, h));
  Tensor yx = x, h2(dims);
  norm.forward_add(yx, r, h2, yx, alpha);
  CHECK(same_bits(yx, y));
  CHECK(same_bits(h2, h));

  // Backward: the norm's gradient at h plus dh.
  Tensor dx_norm(dims), dx(dims);
  const auto grads_plain = norm.backward(h, dy, stats, dx_norm);
  const auto grads = norm.backward_add(h, dy, dh, stats, dx);
  CHECK(same_bits(grads.weight, grads_plain.weight));
  CHECK(same_bits(grads.bias, grads_plain.bias));
  for (Index i = 0; i < dx.size(); ++i) {
    const T two_step = static_cast<T>(static_cast<A>(dx_norm.data()[i]) + static_cast<A>(dh.data()[i]));
    if (sizeof(T) == sizeof(A)) {
      REQUIRE(std::memcmp(&dx.data()[i], &two_step, sizeof(T)) == 0);
    } else {  // the two-step form also rounds dx_norm to T: half an ulp at its magnitude
      const double d = std::abs(double(dx.data()[i]) - double(two_step));
      REQUIRE(d <= 0.5 * ulp_of<T>(double(dx_norm.data()[i])) + ulp_of<T>(double(two_step)));
    }
  }
  Eigen::array<Index, Rank> empty;
  empty.fill(0);
  Tensor none(empty), dx_none(dims);
  norm.backward_add(h, dy, none, stats, dx_none);
  CHECK(same_bits(dx_none, dx_norm));
  Tensor over_dy = dy, over_dh = dh;
  norm.backward_add(h, over_dy, dh, stats, over_dy);
  CHECK(same_bits(over_dy, dx));
  norm.backward_add(h, dy, over_dh, stats, over_dh);
  CHECK(same_bits(over_dh, dx));

  // A thread pool: the same bits.
  Eigen::ThreadPool pool(3);
  Eigen::ThreadPoolDevice device(&pool, 3);
  Tensor hp(dims), yp(dims), dxp(dims);
  const auto stats_pool = norm.forward_add(device, x, r, hp, yp, alpha);
  const auto grads_pool = norm.backward_add(device, hp, dy, dh, stats_pool, dxp);
  CHECK(same_bits(hp, h));
  CHECK(same_bits(yp, y));
  CHECK(same_bits(dxp, dx));
  CHECK(same_bits(grads_pool.weight, grads.weight));
}

template <class Norm, class T, int Layout>
void check_residual(const Norm& norm, Index rows, Index features, float alpha_f) {
  check_residual<Norm, T, Layout, 2>(norm, Eigen::array<Index, 2>{rows, features}, alpha_f);
}

template <class Norm>
Norm with_params(Norm norm, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.f, 0.5f);
  using Q = typename std::remove_reference_t<decltype(norm.weight())>::Scalar;
  for (Index i = 0; i < norm.weight().size(); ++i) norm.weight()(i) += static_cast<Q>(dist(gen));
  for (Index i = 0; i < norm.bias().size(); ++i) norm.bias()(i) = static_cast<Q>(dist(gen));
  return norm;
}

}  // namespace

TEMPLATE_TEST_CASE("forward_add and backward_add: the fused residual add", "[residual]", float, double, Eigen::bfloat16,
                   Eigen::half) {
  using T = TestType;
  using P = normkit::accum_t<T>;
  // 700 features: a vector body and a tail; 4096 x 1024 floats: streaming stores and chunks.
  for (const Index features : {Index(700), Index(1024)}) {
    const Index rows = features == 1024 ? 4096 : 37;
    INFO("rows " << rows << ", features " << features);
    const auto ln = with_params(normkit::LayerNorm<T, P>(features), 5);
    const auto rms = with_params(normkit::RMSNorm<T, P>(features), 6);
    check_residual<normkit::LayerNorm<T, P>, T, Eigen::RowMajor>(ln, rows, features, 0.75f);
    check_residual<normkit::RMSNorm<T, P>, T, Eigen::RowMajor>(rms, rows, features, 1.f);
    if (features == 700) {  // ColMajor: column panels
      check_residual<normkit::LayerNorm<T, P>, T, Eigen::ColMajor>(ln, rows, features, 2.5f);
      check_residual<normkit::RMSNorm<T, P>, T, Eigen::ColMajor>(rms, rows, features, -0.5f);
    }
  }
}

TEMPLATE_TEST_CASE("forward_add and backward_add: rank 3, one and two normalized axes", "[residual]", float, double,
                   Eigen::bfloat16, Eigen::half) {
  using T = TestType;
  using P = normkit::accum_t<T>;
  // (batch, seq, hidden): rows over two leading axes; then normalized_shape (seq, hidden) = one row
  // per batch index, spanning two axes (a tail: 5 x 24 = 120 is not a multiple of 16).
  const Eigen::array<Index, 3> shape{6, 5, 24};
  const auto ln1 = with_params(normkit::LayerNorm<T, P>(24), 11);
  const auto rms1 = with_params(normkit::RMSNorm<T, P>(24), 12);
  const auto ln2 = with_params(normkit::LayerNorm<T, P>({5, 24}), 13);
  const auto rms2 = with_params(normkit::RMSNorm<T, P>({5, 24}), 14);
  check_residual<normkit::LayerNorm<T, P>, T, Eigen::RowMajor, 3>(ln1, shape, 0.75f);
  check_residual<normkit::RMSNorm<T, P>, T, Eigen::RowMajor, 3>(rms1, shape, 1.f);
  check_residual<normkit::LayerNorm<T, P>, T, Eigen::RowMajor, 3>(ln2, shape, -1.25f);
  check_residual<normkit::RMSNorm<T, P>, T, Eigen::RowMajor, 3>(rms2, shape, 2.f);
  check_residual<normkit::LayerNorm<T, P>, T, Eigen::ColMajor, 3>(ln1, shape, 1.5f);
  check_residual<normkit::RMSNorm<T, P>, T, Eigen::ColMajor, 3>(rms2, shape, 0.5f);
}

namespace {

// Finite differences in double: with L(x, r) = sum(y * dy) + sum(h * dh), h = x + alpha * r and
// y = norm(h), dL/dx = dx of backward_add(h, dy, dh) and dL/dr = alpha * dx; without dh,
// L = sum(y * dy) and the same with a size-0 dh.
template <class Norm>
void check_finite_differences(const Norm& norm, double alpha, bool with_dh) {
  using Tensor = Eigen::Tensor<double, 3, Eigen::RowMajor>;
  const Eigen::array<Index, 3> d{2, 3, 10};
  const Tensor x0 = random_tensor<Tensor>(d, 21, 0.3f), r0 = random_tensor<Tensor>(d, 22, -0.2f, 1.5f);
  const Tensor dy = random_tensor<Tensor>(d, 23, 0.f), dh_full = random_tensor<Tensor>(d, 24, 0.f, 0.7f);
  const Tensor dh = with_dh ? dh_full : Tensor(Eigen::array<Index, 3>{0, 0, 0});
  const auto loss = [&](const Tensor& x, const Tensor& r) {
    Tensor h(d), y(d);
    norm.forward_add(x, r, h, y, alpha);
    double l = 0;
    for (Index i = 0; i < y.size(); ++i) l += y.data()[i] * dy.data()[i] + (with_dh ? h.data()[i] * dh.data()[i] : 0.0);
    return l;
  };
  Tensor h(d), y(d), dx(d);
  const auto stats = norm.forward_add(x0, r0, h, y, alpha);
  norm.backward_add(h, dy, dh, stats, dx);
  const double step = 1e-6;
  double worst = 0;
  for (const bool wrt_residual : {false, true}) {
    for (Index i = 0; i < x0.size(); ++i) {
      Tensor xp = x0, xm = x0, rp = r0, rm = r0;
      Tensor& up = wrt_residual ? rp : xp;
      Tensor& um = wrt_residual ? rm : xm;
      up.data()[i] += step, um.data()[i] -= step;
      const double fd = (loss(xp, rp) - loss(xm, rm)) / (2 * step);
      const double want = (wrt_residual ? alpha : 1.0) * dx.data()[i];
      INFO((wrt_residual ? "residual" : "x")
           << " element " << i << ": finite difference " << fd << ", analytic " << want);
      REQUIRE(std::abs(fd - want) <= 1e-7 * (1 + std::abs(want)));
      worst = std::max(worst, std::abs(fd - want));
    }
  }
  INFO("largest difference " << worst);
  CHECK(worst > 0);  // the check saw real numbers, not two zero tensors
}

}  // namespace

TEST_CASE("forward_add and backward_add: finite differences in double (alpha != 1, dh present and absent)",
          "[residual][gradient]") {
  const auto ln = with_params(normkit::LayerNorm<double>(10), 31);
  const auto rms = with_params(normkit::RMSNorm<double>(10), 32);
  const auto ln2 = with_params(normkit::LayerNorm<double>({3, 10}), 33);
  for (const double alpha : {0.6, -1.7, 2.83}) {
    for (const bool with_dh : {true, false}) {
      INFO("alpha " << alpha << ", dh " << (with_dh ? "present" : "absent"));
      check_finite_differences(ln, alpha, with_dh);
      check_finite_differences(rms, alpha, with_dh);
      check_finite_differences(ln2, alpha, with_dh);
    }
  }
}

TEST_CASE("forward_add and backward_add: bad arguments throw before any write", "[residual][errors]") {
  using Tensor = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  normkit::LayerNorm<float> ln(8);
  const Eigen::array<Index, 2> d48{4, 8};
  const Tensor x = random_tensor<Tensor>(d48, 1, 0.f), good = random_tensor<Tensor>(d48, 2, 0.f);
  Tensor wrong(3, 8);
  Tensor h = Tensor(4, 8).setConstant(7.f), y = Tensor(4, 8).setConstant(7.f);
  const auto untouched = [&] {
    for (Index i = 0; i < h.size(); ++i)
      if (h.data()[i] != 7.f || y.data()[i] != 7.f) return false;
    return true;
  };
  const auto throws_naming = [&](auto&& call, const std::string& what) {
    try {
      call();
    } catch (const normkit::shape_error& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("LayerNorm::") != std::string::npos);
      CHECK(msg.find(what) != std::string::npos);
      CHECK(msg.find("[3, 8]") != std::string::npos);
      CHECK(msg.find("[4, 8]") != std::string::npos);
      return;
    }
    FAIL("no shape_error for " << what);
  };
  throws_naming([&] { ln.forward_add(x, wrong, h, y); }, "residual");
  throws_naming([&] { ln.forward_add(x, good, wrong, y); }, "h");
  throws_naming([&] { ln.forward_add(x, good, h, wrong); }, "y");
  CHECK(untouched());
  const auto stats = ln.forward_add(x, good, h, y);
  Tensor dx = Tensor(4, 8).setConstant(7.f);
  throws_naming([&] { ln.backward_add(h, wrong, good, stats, dx); }, "dy");
  throws_naming([&] { ln.backward_add(h, good, wrong, stats, dx); }, "dh");
  throws_naming([&] { ln.backward_add(h, good, good, stats, wrong); }, "dx");
  for (Index i = 0; i < dx.size(); ++i) REQUIRE(dx.data()[i] == 7.f);
}

namespace {

// y and dx of a row norm with effective weight offset + w, in float64.
template <class T, class P>
void check_weight_offset(bool centered, Index rows, Index features, double offset) {
  using Tensor = Eigen::Tensor<T, 2, Eigen::RowMajor>;
  const Eigen::array<Index, 2> d{rows, features};
  const Tensor x = random_tensor<Tensor>(d, 7, 1.f), dy = random_tensor<Tensor>(d, 8, 0.f);
  Tensor y(rows, features), dx(rows, features);
  normkit::NormStats<T> stats;
  normkit::NormGrads<P> grads;
  std::vector<double> w(static_cast<std::size_t>(features)), b(static_cast<std::size_t>(features));
  const auto run = [&](auto norm) {
    for (Index i = 0; i < features; ++i) {
      // Small weights: 2^-8 (and its multiples) vanish next to 1 in bfloat16 but not in accum_t.
      norm.weight()(i) = static_cast<P>(std::ldexp(double(i % 5), -8));
      w[std::size_t(i)] = double(norm.weight()(i));
      if (norm.bias().size())
        norm.bias()(i) = static_cast<P>(0.25 * double(i % 3)), b[std::size_t(i)] = double(norm.bias()(i));
    }
    stats = norm.forward(x, y);
    grads = norm.backward(x, dy, stats, dx);
  };
  normkit::LayerNormOptions lo;
  lo.weight_offset = offset;
  normkit::RMSNormOptions ro;
  ro.weight_offset = offset;
  if (centered) run(normkit::LayerNorm<T, P>(features, lo));
  else run(normkit::RMSNorm<T, P>(features, ro));
  const double tol = sizeof(T) == 2 ? 1.0 / 128 : 1e-5;
  // Per column, sum((y - want) * sign(xhat)) / sum(|xhat| * we) estimates a relative error of the
  // effective weight: a weight rounded to bfloat16 (1 + 2^-8 -> 1) shows as 2^-8, while the
  // outputs' own rounding to bfloat16 averages out (over 512 rows, ~2e-4).
  std::vector<double> drift(static_cast<std::size_t>(features), 0.0), mass(drift);
  for (Index r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (Index i = 0; i < features; ++i) mean += centered ? double(x(r, i)) / double(features) : 0.0;
    for (Index i = 0; i < features; ++i) var += (double(x(r, i)) - mean) * (double(x(r, i)) - mean) / double(features);
    const double rstd = 1 / std::sqrt(var + (centered ? 1e-5 : 1e-6));
    double mg = 0, mgx = 0;
    for (Index i = 0; i < features; ++i) {
      const double xhat = (double(x(r, i)) - mean) * rstd, we = offset + w[std::size_t(i)];
      const double want = xhat * we + b[std::size_t(i)];
      REQUIRE(double(y(r, i)) == Approx(want).margin(tol * (1 + std::abs(want))));
      drift[std::size_t(i)] += (double(y(r, i)) - want) * (xhat < 0 ? -1.0 : 1.0);
      mass[std::size_t(i)] += std::abs(xhat) * we;
      mg += double(dy(r, i)) * we / double(features), mgx += double(dy(r, i)) * we * xhat / double(features);
    }
    for (Index i = 0; i < features; ++i) {
      const double xhat = (double(x(r, i)) - mean) * rstd, we = offset + w[std::size_t(i)];
      const double want = rstd * (double(dy(r, i)) * we - (centered ? mg : 0.0) - xhat * mgx);
      REQUIRE(double(dx(r, i)) == Approx(want).margin(4 * tol * (1 + std::abs(want))));
    }
  }
  for (Index i = 0; i < features; ++i)
    REQUIRE(std::abs(drift[std::size_t(i)] / mass[std::size_t(i)]) < std::ldexp(1.0, -10));
  // dweight = sum(dy * xhat): the offset is not part of it.
  for (Index i = 0; i < features; ++i) {
    double want = 0;
    for (Index r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (Index k = 0; k < features; ++k) mean += centered ? double(x(r, k)) / double(features) : 0.0;
      for (Index k = 0; k < features; ++k)
        var += (double(x(r, k)) - mean) * (double(x(r, k)) - mean) / double(features);
      want += double(dy(r, i)) * (double(x(r, i)) - mean) / std::sqrt(var + (centered ? 1e-5 : 1e-6));
    }
    REQUIRE(double(grads.weight(i)) == Approx(want).margin(4 * tol * std::sqrt(double(rows)) * (1 + std::abs(want))));
  }
}

}  // namespace

TEST_CASE("weight_offset: y = xhat * (offset + weight) + bias, the sum in accum_t", "[residual][weight_offset]") {
  for (const bool centered : {true, false}) {
    INFO("centered " << centered);
    check_weight_offset<float, float>(centered, 6, 40, 1.0);
    check_weight_offset<double, double>(centered, 6, 40, -0.5);
    // bfloat16 parameters: 1 + 2^-8 has no bfloat16 value; a weight rounded to P would lose it.
    check_weight_offset<Eigen::bfloat16, Eigen::bfloat16>(centered, 512, 40, 1.0);
    check_weight_offset<Eigen::bfloat16, float>(centered, 512, 40, 1.0);
  }
}

TEST_CASE("weight_offset: a ColMajor tensor over several normalized axes", "[residual][weight_offset]") {
  // The weights are gathered into memory order and offset there: the result must be the RowMajor one.
  normkit::RMSNormOptions o;
  o.weight_offset = 1;
  normkit::RMSNorm<float> rms({3, 5}, o);
  for (Index i = 0; i < 15; ++i) rms.weight()(i) = 0.1f * float(i);
  using Row = Eigen::Tensor<float, 3, Eigen::RowMajor>;
  const Eigen::array<Index, 3> d{4, 3, 5};
  const Row x = random_tensor<Row>(d, 9, 0.f), dy = random_tensor<Row>(d, 10, 0.f);
  Row y(4, 3, 5), dx(4, 3, 5);
  const auto st = rms.forward(x, y);
  const auto g = rms.backward(x, dy, st, dx);
  // The same logical tensors in ColMajor (element loops: Eigen's shuffle trips GCC bug 105593).
  Eigen::Tensor<float, 3, Eigen::ColMajor> xc(4, 3, 5), dyc(4, 3, 5), yc(4, 3, 5), dxc(4, 3, 5);
  for (Index a = 0; a < 4; ++a)
    for (Index b = 0; b < 3; ++b)
      for (Index c = 0; c < 5; ++c) xc(a, b, c) = x(a, b, c), dyc(a, b, c) = dy(a, b, c);
  const auto stc = rms.forward(xc, yc);
  const auto gc = rms.backward(xc, dyc, stc, dxc);
  for (Index a = 0; a < 4; ++a)
    for (Index b = 0; b < 3; ++b)
      for (Index c = 0; c < 5; ++c) {
        REQUIRE(yc(a, b, c) == Approx(y(a, b, c)).margin(1e-6));
        REQUIRE(dxc(a, b, c) == Approx(dx(a, b, c)).margin(1e-5));
      }
  for (Index i = 0; i < 15; ++i) REQUIRE(gc.weight(i) == Approx(g.weight(i)).margin(1e-5));
}

TEST_CASE("weight_offset must be finite", "[residual][weight_offset][errors]") {
  normkit::LayerNormOptions o;
  o.weight_offset = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(normkit::LayerNorm<float>(8, o), std::invalid_argument);
}
