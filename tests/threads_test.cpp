// The Eigen::ThreadPoolDevice overloads of LayerNorm and RMSNorm: with pools of 1, 2, 3 and 4 threads the
// results equal the single-threaded ones beyond rounding.
//
// Tolerances:
//  * y and dx: 8 * machine epsilon * (1 + |single-threaded value|) — "a few ulps" of O(1) values. Rows are
//    independent, so a row computed on any thread should round identically; the slack only allows a
//    reduction split differently across SIMD lanes or threads.
//  * stats: 8 * machine epsilon relative.
//  * dweight/dbias are sums over all rows; a different split of the rows between threads changes the
//    summation order, so they are compared to 1e-5 (float) / 1e-12 (double) of the sum of |terms|
//    (the reference's dw_scale/db_scale), i.e. relative to the magnitude actually summed.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"
#include "support/row_norm_spec.hpp"

#include <limits>
#include <memory>
#include <string>

using namespace nkref;
using normkit::EpsPlacement;

namespace {

template <class T>
double ulp_tol() {
  return 8.0 * std::numeric_limits<T>::epsilon();
}

template <class Fn>
void randomize_params(Fn& fn, std::uint32_t seed) {
  using T = typename std::decay_t<decltype(fn.weight())>::Scalar;
  const auto nw = static_cast<std::size_t>(fn.weight().size());
  const auto nb = static_cast<std::size_t>(fn.bias().size());
  if (nw) set_vec1(fn.weight(), round_to<T>(uniform_vec(nw, seed, -1.5, 1.5)));
  if (nb) set_vec1(fn.bias(), round_to<T>(normal_vec(nb, seed + 1, 0.0, 0.5)));
}

struct Pool {
  explicit Pool(int n) : pool(n), device(&pool, n) {}
  Eigen::ThreadPool pool;
  Eigen::ThreadPoolDevice device;
};

// Compares fn's device overloads (x in layout LX, y/dy/dx in LY) with its plain overloads.
template <class T, int LX, int LY, std::size_t R, class Fn>
void check_threads(const Fn& fn, const RowNormSpec& spec, const std::array<Index, R>& dims, std::size_t norm_rank,
                   std::uint32_t seed) {
  constexpr int RI = static_cast<int>(R);
  const auto rf = rows_features(dims_vec(dims, RI), norm_rank);
  const auto n = static_cast<std::size_t>(rf.rows * rf.features);
  const Vec xv = random_input<T>(n, seed, 0.5, 1.0);
  const Vec dyv = random_input<T>(n, seed + 1);
  const auto x = make_tensor<T, RI, LX>(dims, xv);
  const auto dy = make_tensor<T, RI, LY>(dims, dyv);
  const T nan = std::numeric_limits<T>::quiet_NaN();

  auto y1 = filled_tensor<T, RI, LY>(dims, nan);
  auto dx1 = filled_tensor<T, RI, LY>(dims, nan);
  const auto s1 = fn.forward(x, y1);
  const auto g1 = fn.backward(x, dy, s1, dx1);
  const Vec y1v = to_rowmajor(y1), dx1v = to_rowmajor(dx1);
  const auto ref = row_norm_backward(xv, dyv, rf.rows, rf.features, spec, vec1(fn.weight()));
  const double gtol = sizeof(T) == 4 ? 1e-5 : 1e-12;

  for (int threads = 1; threads <= 4; ++threads) {
    INFO((sizeof(T) == 4 ? "float" : "double") << " x " << (LX == Eigen::RowMajor ? "RowMajor" : "ColMajor") << " y "
                                               << (LY == Eigen::RowMajor ? "RowMajor" : "ColMajor") << " rows "
                                               << rf.rows << " features " << rf.features << " threads " << threads);
    Pool p(threads);
    auto y = filled_tensor<T, RI, LY>(dims, nan);
    const auto s = fn.forward(p.device, x, y);
    const auto my = compare(to_rowmajor(y), y1v, ulp_tol<T>(), ulp_tol<T>(), "y threaded vs single");
    INFO(my.str());
    CHECK(my.ok);
    REQUIRE(s.rstd.size() == s1.rstd.size());
    REQUIRE(s.mean.size() == s1.mean.size());
    const auto ms = compare(vec1(s.rstd), vec1(s1.rstd), 0, ulp_tol<T>(), "rstd");
    INFO(ms.str());
    CHECK(ms.ok);
    const auto mm = compare(vec1(s.mean), vec1(s1.mean), ulp_tol<T>(), ulp_tol<T>(), "mean");
    INFO(mm.str());
    CHECK(mm.ok);

    auto dx = filled_tensor<T, RI, LY>(dims, nan);
    const auto g = fn.backward(p.device, x, dy, s, dx);
    const auto mdx = compare(to_rowmajor(dx), dx1v, ulp_tol<T>(), ulp_tol<T>(), "dx threaded vs single");
    INFO(mdx.str());
    CHECK(mdx.ok);
    REQUIRE(g.weight.size() == g1.weight.size());
    REQUIRE(g.bias.size() == g1.bias.size());
    const auto mw = compare_scaled(vec1(g.weight), vec1(g1.weight), ref.dw_scale, gtol, "dweight threaded vs single");
    INFO(mw.str());
    CHECK(mw.ok);
    const auto mb = compare_scaled(vec1(g.bias), vec1(g1.bias), ref.db_scale, gtol, "dbias threaded vs single");
    INFO(mb.str());
    CHECK(mb.ok);
    // and both agree with the float64 reference (so the threaded path is not just consistently wrong)
    const double rtol = sizeof(T) == 4 ? 3e-5 : 1e-11;
    const auto mr = compare_scaled(to_rowmajor(dx), ref.dx, ref.dx_scale, rtol, "dx threaded vs reference");
    INFO(mr.str());
    CHECK(mr.ok);
    const auto mwr = compare_scaled2(vec1(g.weight), ref.dw, ref.dw_scale, rtol, ref.dw_round, ulp_tol<T>(),
                                     "dweight threaded vs reference");
    INFO(mwr.str());
    CHECK(mwr.ok);
  }
}

}  // namespace

TEST_CASE("LayerNorm on a thread pool equals single-threaded: 512 x 768, both layouts", "[threads]") {
  normkit::LayerNormOptions o;
  normkit::LayerNorm<float> ln(768, o);
  randomize_params(ln, 1);
  const std::array<Index, 2> dims{512, 768};
  check_threads<float, Eigen::RowMajor, Eigen::RowMajor>(ln, ln_spec(o), dims, 1, 2);
  check_threads<float, Eigen::ColMajor, Eigen::ColMajor>(ln, ln_spec(o), dims, 1, 3);
  check_threads<float, Eigen::RowMajor, Eigen::ColMajor>(ln, ln_spec(o), dims, 1, 4);
}

TEST_CASE("RMSNorm on a thread pool equals single-threaded: 512 x 768, both layouts", "[threads]") {
  normkit::RMSNormOptions o;
  o.bias = true;
  normkit::RMSNorm<float> rms(768, o);
  randomize_params(rms, 5);
  const std::array<Index, 2> dims{512, 768};
  check_threads<float, Eigen::RowMajor, Eigen::RowMajor>(rms, rms_spec(o), dims, 1, 6);
  check_threads<float, Eigen::ColMajor, Eigen::ColMajor>(rms, rms_spec(o), dims, 1, 7);
}

TEST_CASE("Thread pool: other shapes, options and double", "[threads]") {
  SECTION("fewer rows than threads, long rows") {
    normkit::LayerNorm<float> ln(4099);
    randomize_params(ln, 8);
    check_threads<float, Eigen::RowMajor, Eigen::RowMajor>(ln, ln_spec({}), std::array<Index, 2>{3, 4099}, 1, 9);
    check_threads<float, Eigen::ColMajor, Eigen::ColMajor>(ln, ln_spec({}), std::array<Index, 2>{1, 4099}, 1, 10);
  }
  SECTION("rank 4, two normalized axes, ColMajor, OutsideSqrt, no bias") {
    normkit::LayerNormOptions o;
    o.eps_placement = EpsPlacement::OutsideSqrt;
    o.bias = false;
    normkit::LayerNorm<float> ln({3, 64}, o);
    randomize_params(ln, 11);
    check_threads<float, Eigen::ColMajor, Eigen::ColMajor>(ln, ln_spec(o), std::array<Index, 4>{4, 16, 3, 64}, 2, 12);
    check_threads<float, Eigen::ColMajor, Eigen::RowMajor>(ln, ln_spec(o), std::array<Index, 4>{4, 16, 3, 64}, 2, 13);
  }
  SECTION("double, no affine") {
    normkit::LayerNormOptions o;
    o.elementwise_affine = false;
    normkit::LayerNorm<double> ln(256, o);
    check_threads<double, Eigen::RowMajor, Eigen::RowMajor>(ln, ln_spec(o), std::array<Index, 2>{300, 256}, 1, 14);
    normkit::RMSNormOptions ro;
    ro.eps_placement = EpsPlacement::OutsideSqrt;
    normkit::RMSNorm<double> rms(256, ro);
    randomize_params(rms, 15);
    check_threads<double, Eigen::ColMajor, Eigen::ColMajor>(rms, rms_spec(ro), std::array<Index, 3>{10, 30, 256}, 1,
                                                            16);
  }
  SECTION("many short rows") {
    normkit::LayerNorm<float> ln(7);
    randomize_params(ln, 17);
    check_threads<float, Eigen::RowMajor, Eigen::RowMajor>(ln, ln_spec({}), std::array<Index, 2>{4001, 7}, 1, 18);
    check_threads<float, Eigen::ColMajor, Eigen::ColMajor>(ln, ln_spec({}), std::array<Index, 2>{4001, 7}, 1, 19);
  }
}

TEST_CASE("Thread pool: empty batch, NaN isolation and bad input", "[threads]") {
  Pool p(3);
  normkit::LayerNorm<float> ln(16);
  SECTION("empty batch") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> x(0, 16), y(0, 16), dy(0, 16), dx(0, 16);
    const auto s = ln.forward(p.device, x, y);
    CHECK(s.rstd.size() == 0);
    const auto g = ln.backward(p.device, x, dy, s, dx);
    REQUIRE(g.weight.size() == 16);
    REQUIRE(g.bias.size() == 16);
    for (Index j = 0; j < 16; ++j) {
      CHECK(g.weight(j) == 0.0f);
      CHECK(g.bias(j) == 0.0f);
    }
  }
  SECTION("a NaN row stays in its row") {
    const Index rows = 257;
    Vec xv = random_input<float>(static_cast<std::size_t>(rows * 16), 20);
    auto x = make_tensor<float, 2, Eigen::ColMajor>({rows, 16}, xv);
    Eigen::Tensor<float, 2, Eigen::ColMajor> clean(rows, 16), dirty(rows, 16);
    ln.forward(p.device, x, clean);
    x(100, 5) = std::numeric_limits<float>::quiet_NaN();
    ln.forward(p.device, x, dirty);
    bool ok = true;
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < 16; ++j) ok = ok && (r == 100 ? std::isnan(dirty(r, j)) : same_bits(clean(r, j), dirty(r, j)));
    CHECK(ok);
  }
  SECTION("shape errors leave outputs untouched") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> x(4, 16), y(4, 15), dx(4, 15);
    x.setRandom();
    y.setConstant(3.0f);
    CHECK_THROWS_AS(ln.forward(p.device, x, y), normkit::shape_error);
    for (Index i = 0; i < y.size(); ++i) CHECK(y.data()[i] == 3.0f);
    Eigen::Tensor<float, 2, Eigen::RowMajor> y2(4, 16);
    const auto s = ln.forward(p.device, x, y2);
    dx.setConstant(3.0f);
    CHECK_THROWS_AS(ln.backward(p.device, x, y2, s, dx), normkit::shape_error);
    for (Index i = 0; i < dx.size(); ++i) CHECK(dx.data()[i] == 3.0f);
  }
}
