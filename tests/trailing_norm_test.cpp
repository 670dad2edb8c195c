// LayerNorm and RMSNorm, the two functors built on normkit/trailing_norm.hpp, tested by one suite:
// every behaviour is written once and runs for both through a traits struct (LayerNormKind,
// RMSNormKind: what differs is whether the row is centered, whether there is a bias by default, the
// default eps and the reference formula, which nkref::row_norm_forward/backward take from `rms`).
// Against an independent float64 reference (tests/support/reference.hpp), for every option, layout,
// rank and a sweep of feature sizes; backward against central finite differences; bad input.
//
// Tolerances (entry i passes when |got - ref| <= tol):
//  * float forward: 2e-5 * (1 + |ref|). The data are unit scale (x ~ N(0,1), |w| <= 1.5, |b| ~ 0.5), so
//    |y| is O(1..10). Each elementary float operation adds <= 0.5 ulp (u = 6e-8); the row statistics are
//    sums of up to 4099 terms whose rounding errors grow like sqrt(n)*u (random walk) or log(n)*u
//    (pairwise/vectorised), i.e. ~1e-6 relative to the row's scale; 2e-5 leaves a 10x margin and is
//    still ~1000x tighter than any formula mistake (a wrong eps placement alone moves y by ~eps * |xhat|
//    (1e-5 for LayerNorm, 1e-6 for RMSNorm) only for tiny var, so those are caught by the double runs
//    and the worked examples instead).
//  * double forward: 1e-12 * (1 + |ref|): the same argument with u = 1.1e-16 (n*u = 4.5e-13 worst case).
//  * backward: relative to the reference's condition scale (sum of |terms| that make up each result, see
//    RowNormBackward): 3e-5 for float, 1e-11 for double. Scaling by the terms, not by |ref|, is what makes
//    a tolerance fair when g - mean(g) - xhat * mean(g * xhat) (LayerNorm) or g - xhat * mean(g * xhat)
//    (RMSNorm) cancels.
//  * finite differences (double, h = 1e-5): truncation O(h^2) ~ 1e-10 and rounding ~ u|L|/h ~ 1e-10, so
//    1e-7 * (1 + |g|) is loose enough to be robust and far tighter than any wrong term (O(1e-1)).
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"
#include "support/row_norm_spec.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace nkref;
using normkit::EpsPlacement;

namespace {

// What differs between the two functors. A test over both is a TEMPLATE_TEST_CASE over the kinds
// (LayerNormKind, RMSNormKind), or over the kinds times the scalar types, the cases below
// (LayerNormCase<float> ... RMSNormCase<double>; spelled out rather than TEMPLATE_PRODUCT_TEST_CASE,
// whose registration code in Catch2 2.13 trips -Wsign-conversion).
struct LayerNormKind {
  template <class T>
  using Fn = normkit::LayerNorm<T>;
  using Opts = normkit::LayerNormOptions;
  static constexpr bool kRms = false;  // centered: subtracts the row mean, which the stats then carry
  static constexpr const char* kName = "LayerNorm";
};
struct RMSNormKind {
  template <class T>
  using Fn = normkit::RMSNorm<T>;
  using Opts = normkit::RMSNormOptions;
  static constexpr bool kRms = true;  // not centered: the stats' mean stays empty
  static constexpr const char* kName = "RMSNorm";
};
template <class T>
struct LayerNormCase : LayerNormKind {
  using Scalar = T;
};
template <class T>
struct RMSNormCase : RMSNormKind {
  using Scalar = T;
};

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double y = 2e-5, stat = 2e-5, grad = 3e-5, same = 8 * 6e-8;
};
template <>
struct Tol<double> {
  static constexpr double y = 1e-12, stat = 1e-12, grad = 1e-11, same = 8 * 1.1e-16;
};

template <class Opts>
std::vector<Opts> all_configs() {
  std::vector<Opts> out;
  for (bool affine : {true, false})
    for (bool bias : {true, false})
      for (EpsPlacement p : {EpsPlacement::InsideSqrt, EpsPlacement::OutsideSqrt}) {
        Opts o;
        o.elementwise_affine = affine;
        o.bias = bias;
        o.eps_placement = p;
        out.push_back(o);
      }
  return out;
}

template <class Opts>
std::string describe(const Opts& o) {
  return std::string("affine=") + (o.elementwise_affine ? "1" : "0") + " bias=" + (o.bias ? "1" : "0") +
         " eps=" + std::to_string(o.eps) +
         (o.eps_placement == EpsPlacement::InsideSqrt ? " InsideSqrt" : " OutsideSqrt");
}

inline RowNormSpec spec_of(const normkit::LayerNormOptions& o) { return ln_spec(o); }
inline RowNormSpec spec_of(const normkit::RMSNormOptions& o) { return rms_spec(o); }
// The kind a set of options belongs to (the checks below take the functor and its options).
template <class Opts>
using KindOf = std::conditional_t<std::is_same<Opts, normkit::LayerNormOptions>::value, LayerNormKind, RMSNormKind>;

template <class T, class P>
void randomize_params(normkit::detail::TrailingNorm<T, P>& fn, std::uint32_t seed) {
  const auto nw = static_cast<std::size_t>(fn.weight().size());
  const auto nb = static_cast<std::size_t>(fn.bias().size());
  if (nw) set_vec1(fn.weight(), round_to<T>(uniform_vec(nw, seed, -1.5, 1.5)));
  if (nb) set_vec1(fn.bias(), round_to<T>(normal_vec(nb, seed + 7, 0.0, 0.5)));
}

const char* layout_name(int l) { return l == Eigen::RowMajor ? "RowMajor" : "ColMajor"; }

// Forward in layouts (LX, LY) vs the float64 reference; also checks the stats.
template <class T, int LX, int LY, std::size_t R, class Fn, class Opts>
void check_forward(const Fn& fn, const Opts& o, const std::array<Index, R>& dims, std::size_t norm_rank,
                   std::uint32_t seed) {
  const auto rf = rows_features(dims_vec(dims, static_cast<int>(R)), norm_rank);
  const Vec x = random_input<T>(static_cast<std::size_t>(rf.rows * rf.features), seed);
  const auto ref = row_norm_forward(x, rf.rows, rf.features, spec_of(o), vec1(fn.weight()), vec1(fn.bias()));
  const auto run = run_forward<T, LX, LY>(fn, dims, x);
  INFO(KindOf<Opts>::kName << " " << describe(o) << " x " << layout_name(LX) << " y " << layout_name(LY) << " rows "
                           << rf.rows << " features " << rf.features);
  const auto my = compare(run.y, ref.y, Tol<T>::y, Tol<T>::y, "y");
  INFO(my.str());
  CHECK(my.ok);
  REQUIRE(run.stats.rstd.size() == rf.rows);
  const auto mr = compare(vec1(run.stats.rstd), ref.rstd, 0.0, Tol<T>::stat, "rstd");
  INFO(mr.str());
  CHECK(mr.ok);
  if constexpr (KindOf<Opts>::kRms) {
    CHECK(run.stats.mean.size() == 0);
  } else {
    REQUIRE(run.stats.mean.size() == rf.rows);
    const auto mm = compare(vec1(run.stats.mean), ref.mean, Tol<T>::stat, Tol<T>::stat, "mean");
    INFO(mm.str());
    CHECK(mm.ok);
  }
  CHECK((run.stats.mean_lo.size() == 0 || run.stats.mean_lo.size() == rf.rows));
}

// Backward in layouts (LX for x, LD for dy and dx) vs the float64 analytic reference.
template <class T, int LX, int LD, std::size_t R, class Fn, class Opts>
void check_backward(const Fn& fn, const Opts& o, const std::array<Index, R>& dims, std::size_t norm_rank,
                    std::uint32_t seed) {
  const auto rf = rows_features(dims_vec(dims, static_cast<int>(R)), norm_rank);
  const auto n = static_cast<std::size_t>(rf.rows * rf.features);
  const Vec x = random_input<T>(n, seed);
  const Vec dy = random_input<T>(n, seed + 1);
  const auto fwd = run_forward<T, LX, LX>(fn, dims, x);
  const auto run = run_backward<T, LX, LD>(fn, dims, x, dy, fwd.stats);
  const auto ref = row_norm_backward(x, dy, rf.rows, rf.features, spec_of(o), vec1(fn.weight()));
  INFO(KindOf<Opts>::kName << " backward " << describe(o) << " x " << layout_name(LX) << " dy/dx " << layout_name(LD)
                           << " rows " << rf.rows << " features " << rf.features);
  const auto mdx = compare_scaled(run.dx, ref.dx, ref.dx_scale, Tol<T>::grad, "dx");
  INFO(mdx.str());
  CHECK(mdx.ok);
  const auto mdw = compare_scaled2(vec1(run.grads.weight), ref.dw, ref.dw_scale, Tol<T>::grad, ref.dw_round,
                                   8 * std::numeric_limits<T>::epsilon(), "dweight");
  INFO(mdw.str());
  CHECK(mdw.ok);
  const auto mdb = compare_scaled(vec1(run.grads.bias), ref.db, ref.db_scale, Tol<T>::grad, "dbias");
  INFO(mdb.str());
  CHECK(mdb.ok);
}

// The sweep of feature sizes (tails of every SIMD width, the 256/768 of common models, long rows)
// times every option: check(fn, o, {rows, F}) with fresh random parameters, `rows` rows (3 for long rows).
template <class T, class Fn, class Opts, class Check>
void sweep(Index rows, std::uint32_t& seed, Check&& check) {
  for (Index F : {1, 3, 7, 17, 100, 256, 768, 1000, 4099}) {
    for (const Opts& o : all_configs<Opts>()) {
      Fn fn(F, o);
      randomize_params(fn, ++seed);
      check(fn, o, std::array<Index, 2>{F >= 1000 ? 3 : rows, F});
    }
  }
}

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const normkit::shape_error& e) {
    return std::string("shape_error: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("other exception: ") + e.what();
  }
  return "no exception";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

template <class TT>
bool all_equal_to(const TT& t, typename TT::Scalar v) {
  for (Index i = 0; i < t.size(); ++i)
    if (!same_bits(t.data()[i], v)) return false;
  return true;
}

}  // namespace

// -----------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm parameters: sizes and initial values", "[trailing_norm]", LayerNormKind,
                   RMSNormKind) {
  using Opts = typename TestType::Opts;
  using FnF = typename TestType::template Fn<float>;
  using FnD = typename TestType::template Fn<double>;
  const Opts defaults{};  // LayerNorm has a bias by default, RMSNorm does not
  FnF a(5);
  REQUIRE(a.weight().size() == 5);
  REQUIRE(a.bias().size() == (defaults.bias ? 5 : 0));
  for (Index i = 0; i < 5; ++i) CHECK(a.weight()(i) == 1.0f);
  for (Index i = 0; i < a.bias().size(); ++i) CHECK(a.bias()(i) == 0.0f);

  Opts with_bias;
  with_bias.bias = true;
  FnD b({3, 5}, with_bias);
  CHECK(b.weight().size() == 15);
  REQUIRE(b.bias().size() == 15);
  for (Index i = 0; i < 15; ++i) CHECK(b.bias()(i) == 0.0);
  const FnD& cb = b;
  CHECK(cb.weight().size() == 15);
  CHECK(cb.bias().size() == 15);

  Opts no_bias;
  no_bias.bias = false;
  FnF c({3, 5}, no_bias);
  CHECK(c.weight().size() == 15);
  CHECK(c.bias().size() == 0);

  Opts no_affine;
  no_affine.elementwise_affine = false;
  no_affine.bias = true;  // ignored without affine
  FnF d(7, no_affine);
  CHECK(d.weight().size() == 0);
  CHECK(d.bias().size() == 0);
}

// The defaults are PyTorch's: torch.nn.LayerNorm(eps=1e-5, elementwise_affine=True, bias=True) and
// torch.nn.RMSNorm, whose eps=None means the dtype's epsilon at run time; normkit fixes it at 1e-6, as
// LLaMA (README, docs/api.md), and has no bias by default.
TEST_CASE("LayerNorm/RMSNorm option defaults", "[trailing_norm]") {
  const normkit::LayerNormOptions ln;
  CHECK(ln.eps == 1e-5);
  CHECK(ln.elementwise_affine);
  CHECK(ln.bias);
  CHECK(ln.eps_placement == EpsPlacement::InsideSqrt);
  const normkit::RMSNormOptions rms;
  CHECK(rms.eps == 1e-6);
  CHECK(rms.elementwise_affine);
  CHECK(!rms.bias);
  CHECK(rms.eps_placement == EpsPlacement::InsideSqrt);
}

TEMPLATE_TEST_CASE(
    "LayerNorm/RMSNorm forward matches the float64 reference: every option, feature sizes, "
    "both layouts",
    "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  std::uint32_t seed = 100;
  sweep<T, Fn, Opts>(6, seed, [&](const Fn& fn, const Opts& o, const std::array<Index, 2>& dims) {
    check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(fn, o, dims, 1, ++seed);
    check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, o, dims, 1, ++seed);
  });
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm forward over one and several trailing axes, ranks 1 to 4", "[trailing_norm]",
                   LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  std::uint32_t seed = 500;
  for (const Opts& o : all_configs<Opts>()) {
    {  // (2,4,3,5) normalized over (3,5): the example
      Fn fn({3, 5}, o);
      randomize_params(fn, ++seed);
      const std::array<Index, 4> d{2, 4, 3, 5};
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(fn, o, d, 2, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, o, d, 2, ++seed);
      check_forward<T, Eigen::RowMajor, Eigen::ColMajor>(fn, o, d, 2, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::RowMajor>(fn, o, d, 2, ++seed);
    }
    {  // rank 4 over the last axis and over the last three
      Fn f1(5, o), f3({4, 3, 5}, o);
      randomize_params(f1, ++seed);
      randomize_params(f3, ++seed);
      const std::array<Index, 4> d{2, 4, 3, 5};
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f1, o, d, 1, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(f1, o, d, 1, ++seed);
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f3, o, d, 3, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::RowMajor>(f3, o, d, 3, ++seed);
    }
    {  // rank 3 over the last axis and over the last two
      Fn f1(7, o), f2({6, 7}, o);
      randomize_params(f1, ++seed);
      randomize_params(f2, ++seed);
      const std::array<Index, 3> d{4, 6, 7};
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f1, o, d, 1, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(f1, o, d, 1, ++seed);
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f2, o, d, 2, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(f2, o, d, 2, ++seed);
    }
    {  // rank == normalized rank: the whole tensor is one group
      Fn f2({4, 6}, o), f1(9, o);
      randomize_params(f2, ++seed);
      randomize_params(f1, ++seed);
      const std::array<Index, 2> d2{4, 6};
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(f2, o, d2, 2, ++seed);
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f2, o, d2, 2, ++seed);
      const std::array<Index, 1> d1{9};
      check_forward<T, Eigen::RowMajor, Eigen::RowMajor>(f1, o, d1, 1, ++seed);
      check_forward<T, Eigen::ColMajor, Eigen::ColMajor>(f1, o, d1, 1, ++seed);
    }
  }
}

TEMPLATE_TEST_CASE(
    "LayerNorm/RMSNorm weight()/bias() are flattened row-major over normalized_shape in "
    "every layout",
    "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  // Independent of the row-major helpers: index the tensors with their own operator() and compute each
  // y(n, c, i, j) by hand from the PyTorch definition.
  Opts with_bias;  // so that the bias is read in the transposed order below too
  with_bias.bias = true;
  Fn fn({3, 5}, with_bias);
  randomize_params(fn, 901);
  const Vec xv = random_input<T>(2 * 4 * 3 * 5, 902);
  Eigen::Tensor<T, 4, Eigen::ColMajor> x(2, 4, 3, 5);
  from_rowmajor(xv, x);
  Eigen::Tensor<T, 4, Eigen::ColMajor> y(2, 4, 3, 5);
  y.setConstant(T(-99));
  fn.forward(x, y);
  double worst = 0;
  for (Index n = 0; n < 2; ++n)
    for (Index c = 0; c < 4; ++c) {
      long double mu = 0, var = 0;  // RMSNorm: mu = 0 and var = mean(x^2)
      if (!TestType::kRms) {
        for (Index i = 0; i < 3; ++i)
          for (Index j = 0; j < 5; ++j) mu += x(n, c, i, j);
        mu /= 15;
      }
      for (Index i = 0; i < 3; ++i)
        for (Index j = 0; j < 5; ++j) var += (x(n, c, i, j) - mu) * (x(n, c, i, j) - mu);
      var /= 15;
      const long double rstd = 1.0L / std::sqrt(var + static_cast<long double>(with_bias.eps));
      for (Index i = 0; i < 3; ++i)
        for (Index j = 0; j < 5; ++j) {
          const long double want = (x(n, c, i, j) - mu) * rstd * fn.weight()(i * 5 + j) + fn.bias()(i * 5 + j);
          worst = std::max(worst, static_cast<double>(std::fabs(y(n, c, i, j) - want) / (1 + std::fabs(want))));
        }
    }
  INFO("worst relative error " << worst);
  CHECK(worst <= Tol<T>::y);
  // ...and the weights really matter: a transposed (column-major) reading of them gives a different y.
  Fn transposed({3, 5}, with_bias);
  for (Index i = 0; i < 3; ++i)
    for (Index j = 0; j < 5; ++j) {
      transposed.weight()(j * 3 + i) = fn.weight()(i * 5 + j);
      transposed.bias()(j * 3 + i) = fn.bias()(i * 5 + j);
    }
  Eigen::Tensor<T, 4, Eigen::ColMajor> y2(2, 4, 3, 5);
  transposed.forward(x, y2);
  CHECK(max_abs_diff(to_rowmajor(y), to_rowmajor(y2)) > 0.1);
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm: RowMajor, ColMajor, TensorMap and mixed layouts give the same answer",
                   "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>,
                   RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  const Index A = 3, B = 5, F = 37;
  Fn fn(F);
  randomize_params(fn, 41);
  const Vec xv = random_input<T>(static_cast<std::size_t>(A * B * F), 42);
  const std::array<Index, 3> dims{A, B, F};
  const auto ref = row_norm_forward(xv, A * B, F, spec_of(Opts{}), vec1(fn.weight()), vec1(fn.bias()));

  const auto rr = run_forward<T, Eigen::RowMajor, Eigen::RowMajor>(fn, dims, xv);
  const auto cc = run_forward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, dims, xv);
  const auto rc = run_forward<T, Eigen::RowMajor, Eigen::ColMajor>(fn, dims, xv);
  const auto cr = run_forward<T, Eigen::ColMajor, Eigen::RowMajor>(fn, dims, xv);

  // const input map (both spellings of const) and a temporary output map passed as an rvalue
  std::vector<T> xbuf(xv.size()), ybuf(xv.size(), T(-5)), ybuf2(xv.size(), T(-5));
  for (std::size_t i = 0; i < xv.size(); ++i) xbuf[i] = static_cast<T>(xv[i]);
  const T* cx = xbuf.data();
  Eigen::TensorMap<const Eigen::Tensor<T, 3, Eigen::RowMajor>> xmap(cx, A, B, F);
  auto st_map = fn.forward(xmap, Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::RowMajor>>(ybuf.data(), A, B, F));
  Eigen::TensorMap<Eigen::Tensor<const T, 3, Eigen::RowMajor>> xmap2(cx, A, B, F);
  fn.forward(xmap2, Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::ColMajor>>(ybuf2.data(), A, B, F));
  const Vec ymap(ybuf.begin(), ybuf.end());
  const Vec ymap2 = to_rowmajor(Eigen::TensorMap<Eigen::Tensor<T, 3, Eigen::ColMajor>>(ybuf2.data(), A, B, F));

  for (const auto* v : {&rr.y, &cc.y, &rc.y, &cr.y, &ymap, &ymap2}) {
    const auto m = compare(*v, ref.y, Tol<T>::y, Tol<T>::y, "y vs reference");
    INFO(m.str());
    CHECK(m.ok);
    const auto s = compare(*v, rr.y, Tol<T>::same, Tol<T>::same, "y vs RowMajor Tensor");
    INFO(s.str());
    CHECK(s.ok);
  }
  const auto ms = compare(vec1(st_map.rstd), vec1(rr.stats.rstd), 0, Tol<T>::same, "map stats");
  INFO(ms.str());
  CHECK(ms.ok);
  const auto ms2 = compare(vec1(cc.stats.rstd), vec1(rr.stats.rstd), 0, Tol<T>::same, "ColMajor stats");
  INFO(ms2.str());
  CHECK(ms2.ok);
}

// Where the weight's offset within a page trails the outputs' by a few bytes, the forward reads a
// copy of the parameters placed elsewhere (core/fusion.hpp: untrailed_offset): the same bits as
// outputs anywhere else, for forward and forward_add, with and without a weight offset, for rows
// whose starts repeat every page (1024 values) or every quarter page (768 floats).
TEMPLATE_TEST_CASE("LayerNorm/RMSNorm: outputs placed just past the weight give the same bits", "[trailing_norm]",
                   LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  constexpr std::uintptr_t page = normkit::core::tuning::kAliasBytes;
  const Index rows = 9;
  for (const Index F : {Index(1024), Index(768)}) {
    for (const double offset : {0.0, 1.0}) {
      Opts o;
      o.weight_offset = offset;
      Fn fn(F, o);
      randomize_params(fn, 5);
      CAPTURE(F, offset);
      const Vec xv = random_input<T>(static_cast<std::size_t>(rows * F), 6), rv = random_input<T>(xv.size(), 7);
      const auto x = make_tensor<T, 2, Eigen::RowMajor>({rows, F}, xv),
                 r = make_tensor<T, 2, Eigen::RowMajor>({rows, F}, rv);
      // two output buffers whose first value lies 64 bytes past the weight's offset within a page
      std::vector<T> pool(std::size_t(2 * (rows * F + Index(page))));
      const auto trailing = [&](std::size_t k) {
        T* base = pool.data() + k * std::size_t(rows * F + Index(page / sizeof(T)));
        const std::uintptr_t want = (reinterpret_cast<std::uintptr_t>(fn.weight().data()) + 64) % page;
        return base + ((want - reinterpret_cast<std::uintptr_t>(base)) % page) / sizeof(T);
      };
      T* yp = trailing(0);
      T* hp = trailing(1);
      const Index row_bytes = F * Index(sizeof(T));
      REQUIRE(normkit::core::trails_outputs(fn.weight().data(), {normkit::core::OutputRows{yp, row_bytes}}));
      Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>> y_placed(yp, rows, F), h_placed(hp, rows, F);
      Eigen::Tensor<T, 2, Eigen::RowMajor> y(rows, F), h(rows, F);

      const auto st_placed = fn.forward(x, y_placed);
      const auto st = fn.forward(x, y);
      CHECK(std::memcmp(yp, y.data(), sizeof(T) * std::size_t(rows * F)) == 0);
      CHECK(vec1(st_placed.rstd) == vec1(st.rstd));
      CHECK(vec1(st_placed.mean) == vec1(st.mean));

      fn.forward_add(x, r, h_placed, y_placed);
      fn.forward_add(x, r, h, y);
      CHECK(std::memcmp(hp, h.data(), sizeof(T) * std::size_t(rows * F)) == 0);
      CHECK(std::memcmp(yp, y.data(), sizeof(T) * std::size_t(rows * F)) == 0);
    }
  }
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm operator() returns a new tensor of the same dims and layout", "[trailing_norm]",
                   LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  Fn fn({4, 6});
  randomize_params(fn, 77);
  const Vec xv = random_input<T>(2 * 3 * 4 * 6, 78);
  {
    const auto x = make_tensor<T, 4, Eigen::ColMajor>({2, 3, 4, 6}, xv);
    const auto y = fn(x);
    using Y = std::decay_t<decltype(y)>;
    static_assert(static_cast<int>(Y::Layout) == static_cast<int>(Eigen::ColMajor), "same layout");
    static_assert(Y::NumIndices == 4, "same rank");
    static_assert(std::is_same<typename Y::Scalar, T>::value, "same scalar");
    CHECK(y.dimension(0) == 2);
    CHECK(y.dimension(1) == 3);
    CHECK(y.dimension(2) == 4);
    CHECK(y.dimension(3) == 6);
    Eigen::Tensor<T, 4, Eigen::ColMajor> y2(2, 3, 4, 6);
    fn.forward(x, y2);
    CHECK(bits_equal(y, y2));
  }
  {
    const auto x = make_tensor<T, 4, Eigen::RowMajor>({2, 3, 4, 6}, xv);
    auto y = fn(x);
    static_assert(static_cast<int>(decltype(y)::Layout) == static_cast<int>(Eigen::RowMajor), "same layout");
    const auto ref = row_norm_forward(xv, 6, 24, spec_of(Opts{}), vec1(fn.weight()), vec1(fn.bias()));
    const auto m = compare(to_rowmajor(y), ref.y, Tol<T>::y, Tol<T>::y, "operator() RowMajor");
    INFO(m.str());
    CHECK(m.ok);
    // from a const TensorMap: still returns an owning Tensor
    Eigen::TensorMap<const Eigen::Tensor<T, 4, Eigen::RowMajor>> xm(x.data(), 2, 3, 4, 6);
    auto ym = fn(xm);
    static_assert(static_cast<int>(decltype(ym)::Layout) == static_cast<int>(Eigen::RowMajor), "same layout");
    CHECK(ym.size() == y.size());
    const auto m2 = compare(to_rowmajor(ym), to_rowmajor(y), Tol<T>::same, Tol<T>::same, "operator() map");
    INFO(m2.str());
    CHECK(m2.ok);
  }
}

TEMPLATE_TEST_CASE(
    "LayerNorm/RMSNorm stats are ordered as the leading indices in row-major order, "
    "whatever the layout",
    "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  const Index A = 3, B = 4, F = 9;
  Fn fn(F);
  // LayerNorm: row r = (a, b) = a * B + b gets offset 10 * r, so that its mean identifies it.
  // RMSNorm: row r is scaled by 2^(r/2), so that its rstd ~ 1 / (2^(r/2) * rms) identifies it.
  Vec xv = random_input<T>(static_cast<std::size_t>(A * B * F), 11, 0.0, TestType::kRms ? 1.0 : 0.5);
  for (Index r = 0; r < A * B; ++r)
    for (Index j = 0; j < F; ++j) {
      double& e = xv[static_cast<std::size_t>(r * F + j)];
      e = TestType::kRms ? e * std::pow(2.0, 0.5 * static_cast<double>(r)) : e + 10.0 * static_cast<double>(r);
    }
  xv = round_to<T>(xv);
  const auto ref = row_norm_forward(xv, A * B, F, spec_of(Opts{}), vec1(fn.weight()), vec1(fn.bias()));
  const auto run = run_forward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, std::array<Index, 3>{A, B, F}, xv);
  if constexpr (TestType::kRms) {
    CHECK(run.stats.mean.size() == 0);  // RMSNorm leaves mean empty
    REQUIRE(run.stats.rstd.size() == A * B);
    for (Index r = 1; r < A * B; ++r) CHECK(run.stats.rstd(r) != Approx(run.stats.rstd(r - 1)).epsilon(1e-3));
  } else {
    REQUIRE(run.stats.mean.size() == A * B);
    REQUIRE(run.stats.rstd.size() == A * B);
    for (Index r = 0; r < A * B; ++r) CHECK(std::fabs(run.stats.mean(r) - 10.0 * static_cast<double>(r)) < 1.0);
    const auto mm = compare(vec1(run.stats.mean), ref.mean, Tol<T>::stat * 100, Tol<T>::stat, "mean");
    INFO(mm.str());
    CHECK(mm.ok);
  }
  const auto mr = compare(vec1(run.stats.rstd), ref.rstd, 0, Tol<T>::stat, "rstd");
  INFO(mr.str());
  CHECK(mr.ok);
  const auto my = compare(run.y, ref.y, Tol<T>::y, Tol<T>::y, "y");
  INFO(my.str());
  CHECK(my.ok);
}

// ---------------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm backward equals central finite differences of L = sum(y * r), every option",
                   "[trailing_norm][fd]", LayerNormKind, RMSNormKind) {
  using Opts = typename TestType::Opts;
  using Fn = typename TestType::template Fn<double>;
  std::uint32_t seed = 3000;
  for (const Opts& o : all_configs<Opts>()) {
    for (int shape = 0; shape < 2; ++shape) {
      // shape 0: (1, 3, 6) RowMajor over the last axis; shape 1: (3, 2, 3) ColMajor over the last two axes
      Fn fn = shape == 0 ? Fn(6, o) : Fn({2, 3}, o);
      randomize_params(fn, ++seed);
      const std::array<Index, 3> dims3{shape == 0 ? 1 : 3, shape == 0 ? 3 : 2, shape == 0 ? 6 : 3};
      const Vec x = random_input<double>(18, ++seed);
      const Vec r = random_input<double>(18, ++seed);
      INFO(describe(o) << " shape " << shape);

      auto loss = [&](const Fn& f, const Vec& xx) {
        Vec y = shape == 0 ? run_forward<double, Eigen::RowMajor, Eigen::RowMajor>(f, dims3, xx).y
                           : run_forward<double, Eigen::ColMajor, Eigen::ColMajor>(f, dims3, xx).y;
        return dot(y, r);
      };
      const auto fwd = shape == 0 ? run_forward<double, Eigen::RowMajor, Eigen::RowMajor>(fn, dims3, x)
                                  : run_forward<double, Eigen::ColMajor, Eigen::ColMajor>(fn, dims3, x);
      const auto bwd = shape == 0 ? run_backward<double, Eigen::RowMajor, Eigen::RowMajor>(fn, dims3, x, r, fwd.stats)
                                  : run_backward<double, Eigen::ColMajor, Eigen::ColMajor>(fn, dims3, x, r, fwd.stats);
      const double h = 1e-5;
      const Vec gx = fd_gradient([&](const Vec& xx) { return loss(fn, xx); }, x, h);
      const auto mx = compare(bwd.dx, gx, 1e-7, 1e-7, "dx vs finite differences");
      INFO(mx.str());
      CHECK(mx.ok);
      CHECK(max_abs(gx) > 1e-3);  // the check is not vacuous

      // dweight and dbias against finite differences in each parameter; an absent one has no gradient.
      const auto check_param =
          [&](bool present, auto param, const Eigen::Tensor<double, 1>& grad, const std::string& what) {
        if (!present) {
          CHECK(grad.size() == 0);
          return;
        }
        Fn g = fn;
        const Vec fd = fd_gradient(
            [&](const Vec& p) {
          set_vec1(param(g), p);
          return loss(g, x);
            },
            vec1(param(fn)), h);
        const auto m = compare(vec1(grad), fd, 1e-7, 1e-7, what + " vs finite differences");
        INFO(m.str());
        CHECK(m.ok);
      };
      check_param(
          o.elementwise_affine, [](Fn & f) -> auto& { return f.weight(); }, bwd.grads.weight, "dweight");
      check_param(
          o.elementwise_affine && o.bias, [](Fn & f) -> auto& { return f.bias(); }, bwd.grads.bias, "dbias");
    }
  }
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm backward matches the float64 analytic reference: options, sizes, layouts",
                   "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>,
                   RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  std::uint32_t seed = 4000;
  sweep<T, Fn, Opts>(5, seed, [&](const Fn& fn, const Opts& o, const std::array<Index, 2>& dims) {
    check_backward<T, Eigen::RowMajor, Eigen::RowMajor>(fn, o, dims, 1, ++seed);
    check_backward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, o, dims, 1, ++seed);
    check_backward<T, Eigen::RowMajor, Eigen::ColMajor>(fn, o, dims, 1, ++seed);
  });
  for (const Opts& o : all_configs<Opts>()) {  // several normalized axes, rank 4
    Fn fn({3, 5}, o);
    randomize_params(fn, ++seed);
    const std::array<Index, 4> d{2, 4, 3, 5};
    check_backward<T, Eigen::RowMajor, Eigen::RowMajor>(fn, o, d, 2, ++seed);
    check_backward<T, Eigen::ColMajor, Eigen::ColMajor>(fn, o, d, 2, ++seed);
    check_backward<T, Eigen::ColMajor, Eigen::RowMajor>(fn, o, d, 2, ++seed);
  }
}

// Many rows: dweight/dbias are sums over all of them (and over the chunks a pool cuts them into, which
// properties_test 4b shows give the plain call's bits), on the shapes 4b runs on pools.
TEMPLATE_TEST_CASE("LayerNorm/RMSNorm backward matches the float64 reference over many rows", "[trailing_norm]",
                   LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>, RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  Opts with_bias;
  with_bias.bias = true;
  Fn wide(768, with_bias), short_rows(7, with_bias);
  randomize_params(wide, 7001);
  randomize_params(short_rows, 7002);
  const std::array<Index, 2> d512{512, 768}, d4001{4001, 7};
  check_backward<T, Eigen::RowMajor, Eigen::RowMajor>(wide, with_bias, d512, 1, 7003);
  check_backward<T, Eigen::ColMajor, Eigen::ColMajor>(wide, with_bias, d512, 1, 7004);
  check_backward<T, Eigen::RowMajor, Eigen::ColMajor>(wide, with_bias, d512, 1, 7005);
  check_backward<T, Eigen::RowMajor, Eigen::RowMajor>(short_rows, with_bias, d4001, 1, 7006);
  check_backward<T, Eigen::ColMajor, Eigen::ColMajor>(short_rows, with_bias, d4001, 1, 7007);
  Opts o;  // two normalized axes of rank 4, OutsideSqrt, no bias
  o.eps_placement = EpsPlacement::OutsideSqrt;
  o.bias = false;
  Fn two_axes({3, 64}, o);
  randomize_params(two_axes, 7008);
  const std::array<Index, 4> d4{4, 16, 3, 64};
  check_backward<T, Eigen::ColMajor, Eigen::ColMajor>(two_axes, o, d4, 2, 7009);
  check_backward<T, Eigen::ColMajor, Eigen::RowMajor>(two_axes, o, d4, 2, 7010);
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm backward through TensorMaps and with stats rebuilt without mean_lo",
                   "[trailing_norm]", LayerNormCase<float>, LayerNormCase<double>, RMSNormCase<float>,
                   RMSNormCase<double>) {
  using T = typename TestType::Scalar;
  using Fn = typename TestType::template Fn<T>;
  using Opts = typename TestType::Opts;
  const Index N = 4, F = 33;
  Fn fn(F);
  randomize_params(fn, 5);
  const Vec xv = random_input<T>(N * F, 6), dyv = random_input<T>(N * F, 7);
  const auto ref = row_norm_backward(xv, dyv, N, F, spec_of(Opts{}), vec1(fn.weight()));
  std::vector<T> xb(xv.begin(), xv.end()), dyb(dyv.begin(), dyv.end()), yb(xb.size()), dxb(xb.size(), T(-3));
  Eigen::TensorMap<const Eigen::Tensor<T, 2, Eigen::RowMajor>> x(xb.data(), N, F), dy(dyb.data(), N, F);
  auto stats = fn.forward(x, Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>>(yb.data(), N, F));
  auto grads = fn.backward(x, dy, stats, Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>>(dxb.data(), N, F));
  const Vec dx(dxb.begin(), dxb.end());
  const auto m = compare_scaled(dx, ref.dx, ref.dx_scale, Tol<T>::grad, "dx via maps");
  INFO(m.str());
  CHECK(m.ok);
  const auto mw = compare_scaled(vec1(grads.weight), ref.dw, ref.dw_scale, Tol<T>::grad, "dweight via maps");
  INFO(mw.str());
  CHECK(mw.ok);

  // Stats that come from elsewhere may lack mean_lo (LayerNorm; for unit-scale data the answer is the same
  // to rounding) and RMSNorm needs rstd alone (its mean is empty).
  normkit::NormStats<T> plain;
  plain.mean = stats.mean;
  plain.rstd = stats.rstd;
  std::vector<T> dxb2(xb.size(), T(-3));
  fn.backward(x, dy, plain, Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>>(dxb2.data(), N, F));
  const auto m2 = compare_scaled(Vec(dxb2.begin(), dxb2.end()), ref.dx, ref.dx_scale, Tol<T>::grad,
                                 "dx, stats rebuilt from mean and rstd");
  INFO(m2.str());
  CHECK(m2.ok);
}

// ---------------------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm rejects mismatched dimensions with a shape_error naming both, and writes nothing",
                   "[trailing_norm][errors]", LayerNormKind, RMSNormKind) {
  using Fn = typename TestType::template Fn<float>;
  constexpr const char* kName = TestType::kName;
  const float sentinel = 42.5f;
  Fn ln3(3);
  Eigen::Tensor<float, 2, Eigen::RowMajor> x23(2, 3), dy23(2, 3);
  x23.setRandom();
  dy23.setRandom();
  auto stats = ln3.forward(x23, Eigen::Tensor<float, 2, Eigen::RowMajor>(2, 3));

  SECTION("forward: y dims differ from x dims") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> y24(2, 4);
    y24.setConstant(sentinel);
    Fn ln({3});
    const auto msg = message_of([&] { ln.forward(x23, y24); });
    INFO(msg);
    CHECK(contains(msg, "shape_error"));
    CHECK(contains(msg, kName));
    CHECK(contains(msg, "[2, 3]"));
    CHECK(contains(msg, "[2, 4]"));
    CHECK(all_equal_to(y24, sentinel));
    // and the ColMajor output case
    Eigen::Tensor<float, 2, Eigen::ColMajor> y33(3, 3);
    y33.setConstant(sentinel);
    const auto msg2 = message_of([&] { ln.forward(x23, y33); });
    INFO(msg2);
    CHECK(contains(msg2, "shape_error"));
    CHECK(contains(msg2, "[3, 3]"));
    CHECK(all_equal_to(y33, sentinel));
  }
  SECTION("forward: trailing dims differ from normalized_shape") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> x24(2, 4), y24(2, 4);
    x24.setRandom();
    y24.setConstant(sentinel);
    const auto msg = message_of([&] { ln3.forward(x24, y24); });
    INFO(msg);
    CHECK(contains(msg, "shape_error"));
    CHECK(contains(msg, kName));
    CHECK(contains(msg, "[3]"));
    CHECK((contains(msg, "[4]") || contains(msg, "[2, 4]")));
    CHECK(all_equal_to(y24, sentinel));

    Fn ln35({3, 5});
    Eigen::Tensor<float, 4, Eigen::ColMajor> x4(2, 4, 3, 4), y4(2, 4, 3, 4);
    x4.setRandom();
    y4.setConstant(sentinel);
    const auto msg2 = message_of([&] { ln35.forward(x4, y4); });
    INFO(msg2);
    CHECK(contains(msg2, "shape_error"));
    CHECK(contains(msg2, kName));
    CHECK(contains(msg2, "[3, 5]"));
    CHECK((contains(msg2, "[3, 4]") || contains(msg2, "[2, 4, 3, 4]")));
    CHECK(all_equal_to(y4, sentinel));
    CHECK_THROWS_AS(ln35(x4), normkit::shape_error);
  }
  SECTION("forward: rank smaller than the normalized rank") {
    Fn ln35({3, 5});
    Eigen::Tensor<float, 1> x1(15), y1(15);
    x1.setRandom();
    y1.setConstant(sentinel);
    const auto msg = message_of([&] { ln35.forward(x1, y1); });
    INFO(msg);
    CHECK(contains(msg, "shape_error"));
    CHECK(contains(msg, kName));
    CHECK(contains(msg, "[3, 5]"));
    CHECK(contains(msg, "[15]"));
    CHECK(all_equal_to(y1, sentinel));
  }
  SECTION("backward: dy or dx dims differ from x dims") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> dy24(2, 4), dx23(2, 3), dx24(2, 4);
    dy24.setRandom();
    dx23.setConstant(sentinel);
    const auto msg = message_of([&] { ln3.backward(x23, dy24, stats, dx23); });
    INFO(msg);
    CHECK(contains(msg, "shape_error"));
    CHECK(contains(msg, kName));
    CHECK(contains(msg, "[2, 3]"));
    CHECK(contains(msg, "[2, 4]"));
    CHECK(all_equal_to(dx23, sentinel));

    dx24.setConstant(sentinel);
    const auto msg2 = message_of([&] { ln3.backward(x23, dy23, stats, dx24); });
    INFO(msg2);
    CHECK(contains(msg2, "shape_error"));
    CHECK(contains(msg2, kName));
    CHECK(contains(msg2, "[2, 3]"));
    CHECK(contains(msg2, "[2, 4]"));
    CHECK(all_equal_to(dx24, sentinel));
  }
  SECTION("backward: stats of the wrong size") {
    Eigen::Tensor<float, 2, Eigen::RowMajor> dx(2, 3);
    dx.setConstant(sentinel);
    auto bad = stats;
    bad.rstd = Eigen::Tensor<float, 1>(3);
    bad.rstd.setConstant(1.0f);
    const auto msg = message_of([&] { ln3.backward(x23, dy23, bad, dx); });
    INFO(msg);
    CHECK(contains(msg, "shape_error"));
    CHECK(contains(msg, kName));
    CHECK(contains(msg, "rstd"));
    CHECK(contains(msg, "3"));
    CHECK(contains(msg, "2"));
    CHECK(all_equal_to(dx, sentinel));

    auto empty = stats;  // no rstd at all
    empty.rstd = Eigen::Tensor<float, 1>();
    CHECK_THROWS_AS(ln3.backward(x23, dy23, empty, dx), normkit::shape_error);
    CHECK(all_equal_to(dx, sentinel));
  }
}

// LayerNorm only: RMSNorm's stats carry no mean (the empty rstd case above is common to both).
TEST_CASE("LayerNorm backward rejects a mean or mean_lo of the wrong size, and writes nothing",
          "[trailing_norm][layer_norm][errors]") {
  const float sentinel = 42.5f;
  normkit::LayerNorm<float> ln3(3);
  Eigen::Tensor<float, 2, Eigen::RowMajor> x23(2, 3), dy23(2, 3), dx(2, 3);
  x23.setRandom();
  dy23.setRandom();
  dx.setConstant(sentinel);
  const auto stats = ln3.forward(x23, Eigen::Tensor<float, 2, Eigen::RowMajor>(2, 3));
  auto bad_mean = stats;
  bad_mean.mean = Eigen::Tensor<float, 1>(1);
  bad_mean.mean.setZero();
  const auto msg = message_of([&] { ln3.backward(x23, dy23, bad_mean, dx); });
  INFO(msg);
  CHECK(contains(msg, "shape_error"));
  CHECK(contains(msg, "mean"));
  CHECK(all_equal_to(dx, sentinel));

  auto no_mean = stats;  // LayerNorm needs the mean: empty is the wrong size too
  no_mean.mean = Eigen::Tensor<float, 1>();
  CHECK_THROWS_AS(ln3.backward(x23, dy23, no_mean, dx), normkit::shape_error);
  CHECK(all_equal_to(dx, sentinel));

  auto bad_lo = stats;  // mean_lo may be empty, but a non-empty one must have one entry per row
  bad_lo.mean_lo = Eigen::Tensor<float, 1>(5);
  bad_lo.mean_lo.setZero();
  CHECK_THROWS_AS(ln3.backward(x23, dy23, bad_lo, dx), normkit::shape_error);
  CHECK(all_equal_to(dx, sentinel));
}

TEMPLATE_TEST_CASE("LayerNorm/RMSNorm rejects invalid options with std::invalid_argument", "[trailing_norm][errors]",
                   LayerNormKind, RMSNormKind) {
  using Opts = typename TestType::Opts;
  using Fn = typename TestType::template Fn<float>;
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(2, 3), y(2, 3);
  x.setRandom();
  auto construct_and_run = [&](Index features, Opts o) {
    Fn ln(features, o);
    ln.forward(x, y);
  };
  Opts neg;
  neg.eps = -1e-5;
  y.setConstant(7.0f);
  const auto msg = message_of([&] { construct_and_run(3, neg); });
  INFO(msg);
  CHECK(!contains(msg, "no exception"));
  CHECK(contains(msg, "eps"));
  CHECK_THROWS_AS(construct_and_run(3, neg), std::invalid_argument);
  CHECK(all_equal_to(y, 7.0f));

  Opts nan;
  nan.eps = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(construct_and_run(3, nan), std::invalid_argument);
  const auto msg2 = message_of([&] { construct_and_run(3, nan); });
  INFO(msg2);
  CHECK(contains(msg2, "eps"));
  CHECK(all_equal_to(y, 7.0f));

  Opts zero;
  zero.eps = 0.0;  // valid
  CHECK_NOTHROW(construct_and_run(3, zero));

  Eigen::Tensor<float, 2, Eigen::RowMajor> e(2, 0), ey(2, 0);
  CHECK_THROWS_AS(([&] {
                    Fn ln(Index(0));
                    ln.forward(e, ey);
                  }()),
                  std::invalid_argument);
  Eigen::Tensor<float, 3, Eigen::RowMajor> e3(2, 3, 0), ey3(2, 3, 0);
  CHECK_THROWS_AS(([&] {
                    Fn ln({3, 0});
                    ln.forward(e3, ey3);
                  }()),
                  std::invalid_argument);
  CHECK_THROWS_AS(([&] {
                    Fn ln(Index(-2));
                    ln.forward(x, y);
                  }()),
                  std::invalid_argument);
}
