// CrossEntropyLoss (cross_entropy.hpp): against a float64 reference of
// torch.nn.functional.cross_entropy written here (weights, label smoothing as PyTorch 1.13 defines
// it, ignore_index, Mean/Sum/None), (N, C) and (N, C, d...) in both layouts with targets of either
// layout; finite differences in double; forward_backward against forward + backward; in place;
// bad targets (out_of_range naming the index and C, nothing written); all-ignored Mean; shape errors;
// numerics (huge logits, -Inf, NaN isolation); invariance to the thread count; bfloat16.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

using namespace nkref;
using normkit::CrossEntropyLoss;
using normkit::CrossEntropyOptions;
using normkit::Reduction;

namespace {

using I64 = std::int64_t;

struct Ref {
  Vec per;       // per target element (row-major over (N, d...))
  double total;  // Mean / Sum
  Vec dlogits;   // row-major (N, C, d...)
};

// x row-major (N, C, inner), t row-major (N, inner); dloss: 1 value (Mean/Sum) or one per target.
Ref reference(const Vec& x, Index N, Index C, Index inner, const std::vector<I64>& t, const Vec& w, double eps,
              I64 ignore, Reduction red, const Vec& dloss) {
  Ref r{Vec(std::size_t(N * inner), 0.0), 0.0, Vec(x.size(), 0.0)};
  double W = 0, denom = 0, sum = 0;
  for (Index c = 0; c < C; ++c) W += w.empty() ? 1.0 : w[std::size_t(c)];
  const auto wc = [&](Index c) { return w.empty() ? 1.0 : w[std::size_t(c)]; };
  for (std::size_t j = 0; j < t.size(); ++j)
    if (t[j] != ignore) denom += wc(Index(t[j]));
  for (Index n = 0; n < N; ++n)
    for (Index i = 0; i < inner; ++i) {
      const std::size_t j = std::size_t(n * inner + i);
      if (t[j] == ignore) continue;
      const auto at = [&](Index c) { return std::size_t((n * C + c) * inner + i); };
      double m = -INFINITY, s = 0;
      for (Index c = 0; c < C; ++c) m = std::max(m, x[at(c)]);
      for (Index c = 0; c < C; ++c) s += std::exp(x[at(c)] - m);
      const double lse = m + std::log(s);
      const Index tt = Index(t[j]);
      double smooth = 0;
      for (Index c = 0; c < C; ++c) smooth += -wc(c) * (x[at(c)] - lse);
      r.per[j] = (1 - eps) * -wc(tt) * (x[at(tt)] - lse) + eps / double(C) * smooth;
      sum += r.per[j];
    }
  r.total = red == Reduction::Mean ? sum / denom : sum;
  for (Index n = 0; n < N; ++n)
    for (Index i = 0; i < inner; ++i) {
      const std::size_t j = std::size_t(n * inner + i);
      if (t[j] == ignore) continue;
      const double g = red == Reduction::None ? dloss[j] : red == Reduction::Mean ? dloss[0] / denom : dloss[0];
      const auto at = [&](Index c) { return std::size_t((n * C + c) * inner + i); };
      double m = -INFINITY, s = 0;
      for (Index c = 0; c < C; ++c) m = std::max(m, x[at(c)]);
      for (Index c = 0; c < C; ++c) s += std::exp(x[at(c)] - m);
      const Index tt = Index(t[j]);
      for (Index c = 0; c < C; ++c) {
        const double p = std::exp(x[at(c)] - m) / s;
        r.dlogits[at(c)] = g * ((1 - eps) * wc(tt) * (p - (c == tt)) + eps / double(C) * (W * p - wc(c)));
      }
    }
  return r;
}

std::vector<I64> targets(std::size_t n, Index C, std::uint32_t seed, I64 ignore, int ignore_every) {
  std::mt19937 gen(seed);
  std::vector<I64> t(n);
  for (std::size_t j = 0; j < n; ++j)
    t[j] = ignore_every && j % std::size_t(ignore_every) == 1 ? ignore : I64(gen() % std::uint32_t(C));
  return t;
}

// Runs forward, backward (dloss) and forward_backward for logits of layout LL and targets of layout LT.
template <class T, int LL, int LT, std::size_t R>
void check_case(const std::array<Index, R>& dims, const CrossEntropyOptions& o, bool weighted, std::uint32_t seed) {
  const Index N = dims[0], C = dims[1], inner = product(std::vector<Index>(dims.begin() + 2, dims.end()));
  const Vec x = round_to<T>(normal_vec(std::size_t(N * C * inner), seed, 0.0, 2.0));
  const std::vector<I64> t = targets(std::size_t(N * inner), C, seed + 1, o.ignore_index, 3);
  CrossEntropyLoss<T> ce(o);
  Vec w;
  if (weighted) {
    w = round_to<T>(uniform_vec(std::size_t(C), seed + 2, 0.2, 2.0));
    ce.weight() = Eigen::Tensor<T, 1>(C);
    set_vec1(ce.weight(), w);
  }
  std::array<Index, R - 1> tdims{};
  tdims[0] = N;
  for (std::size_t a = 2; a < R; ++a) tdims[a - 1] = dims[a];
  const auto xt = make_tensor<T, int(R), LL>(dims, x);
  Eigen::Tensor<I64, int(R) - 1, LT> tt(tdims);
  from_rowmajor(Vec(t.begin(), t.end()), tt);
  const Vec dl = o.reduction == Reduction::None ? normal_vec(t.size(), seed + 3) : Vec{0.75};
  const Ref ref = reference(x, N, C, inner, t, w, o.label_smoothing, o.ignore_index, o.reduction, dl);
  const double tol = std::is_same_v<T, double> ? 1e-12 : 2e-6;

  const Eigen::Tensor<typename normkit::accum_t<T>, 1> loss = ce.forward(xt, tt);
  if (o.reduction == Reduction::None) {
    REQUIRE(loss.size() == Index(t.size()));
    for (std::size_t j = 0; j < t.size(); ++j)
      REQUIRE(std::fabs(double(loss(Index(j))) - ref.per[j]) <= tol * (1 + std::fabs(ref.per[j])));
  } else {
    REQUIRE(loss.size() == 1);
    REQUIRE(std::fabs(double(loss(0)) - ref.total) <= tol * (1 + std::fabs(ref.total)));
  }
  Eigen::Tensor<typename normkit::accum_t<T>, 1> dlt(Index(dl.size()));
  set_vec1(dlt, dl);
  Eigen::Tensor<T, int(R), LL> dx(dims);
  ce.backward(xt, tt, dlt, dx);
  const Vec got = to_rowmajor(dx);
  for (std::size_t k = 0; k < got.size(); ++k) {
    INFO("k " << k << " got " << got[k] << " want " << ref.dlogits[k]);
    REQUIRE(std::fabs(got[k] - ref.dlogits[k]) <= tol * (1 + std::fabs(ref.dlogits[k])));
  }
  // forward_backward = forward + backward(dloss = 1), bit for bit
  if (o.reduction != Reduction::None) {
    Eigen::Tensor<typename normkit::accum_t<T>, 1> one(1);
    one(0) = 1;
    Eigen::Tensor<T, int(R), LL> dx1(dims), dx2(dims);
    ce.backward(xt, tt, one, dx1);
    const auto l2 = ce.forward_backward(xt, tt, dx2);
    REQUIRE(same_bits(l2(0), loss(0)));
    REQUIRE(bits_equal(dx1, dx2));
    // in place: the logits' buffer becomes dlogits
    Eigen::Tensor<T, int(R), LL> z = xt;
    const auto l3 = ce.forward_backward(z, tt, z);
    REQUIRE(same_bits(l3(0), loss(0)));
    REQUIRE(bits_equal(z, dx2));
  }
}

}  // namespace

TEST_CASE("cross-entropy: float64 reference, (N, C) and (N, C, d...), both layouts, every option", "[cross_entropy]") {
  for (Reduction red : {Reduction::Mean, Reduction::Sum, Reduction::None})
    for (double eps : {0.0, 0.1})
      for (bool weighted : {false, true}) {
        const CrossEntropyOptions o{-100, eps, red};
        INFO("reduction " << int(red) << " eps " << eps << " weighted " << weighted);
        check_case<double, Eigen::RowMajor, Eigen::RowMajor>(std::array<Index, 2>{9, 37}, o, weighted, 1);
        check_case<double, Eigen::ColMajor, Eigen::RowMajor>(std::array<Index, 2>{9, 37}, o, weighted, 2);
        check_case<float, Eigen::RowMajor, Eigen::RowMajor>(std::array<Index, 2>{7, 1003}, o, weighted, 3);
        check_case<float, Eigen::ColMajor, Eigen::ColMajor>(std::array<Index, 2>{7, 1003}, o, weighted, 4);
        check_case<double, Eigen::RowMajor, Eigen::ColMajor>(std::array<Index, 3>{3, 11, 5}, o, weighted, 5);
        check_case<double, Eigen::ColMajor, Eigen::RowMajor>(std::array<Index, 3>{3, 11, 5}, o, weighted, 6);
        check_case<float, Eigen::RowMajor, Eigen::RowMajor>(std::array<Index, 4>{2, 19, 3, 4}, o, weighted, 7);
        check_case<float, Eigen::ColMajor, Eigen::ColMajor>(std::array<Index, 4>{2, 19, 3, 4}, o, weighted, 8);
      }
  // another ignore_index, and a class index as ignore_index
  check_case<double, Eigen::RowMajor, Eigen::RowMajor>(std::array<Index, 2>{9, 37}, {3, 0.2, Reduction::Mean}, true, 9);
}

TEST_CASE("cross-entropy: finite differences (double)", "[cross_entropy]") {
  const Index N = 3, C = 5, inner = 2;
  const Vec x = normal_vec(std::size_t(N * C * inner), 71);
  const std::vector<I64> t{0, 4, -100, 2, 1, 3};
  const Vec w{0.5, 1.0, 2.0, 1.5, 0.25};
  for (double eps : {0.0, 0.3}) {
    CrossEntropyLoss<double> ce({-100, eps, Reduction::Mean});
    ce.weight() = Eigen::Tensor<double, 1>(C);
    set_vec1(ce.weight(), w);
    const auto f = [&](const Vec& v) { return reference(v, N, C, inner, t, w, eps, -100, Reduction::Mean, {1}).total; };
    const Vec fd = fd_gradient(f, x, 1e-6);
    const auto xt = make_tensor<double, 3, Eigen::RowMajor>({N, C, inner}, x);
    Eigen::Tensor<I64, 2, Eigen::RowMajor> tt(N, inner);
    for (std::size_t j = 0; j < t.size(); ++j) tt.data()[j] = t[j];
    Eigen::Tensor<double, 3, Eigen::RowMajor> dx(N, C, inner);
    const auto loss = ce.forward_backward(xt, tt, dx);
    REQUIRE(std::fabs(loss(0) - f(x)) < 1e-12);
    const Vec got = to_rowmajor(dx);
    for (std::size_t k = 0; k < got.size(); ++k) REQUIRE(std::fabs(got[k] - fd[k]) < 1e-7);
  }
}

TEST_CASE("cross-entropy: bad targets, all ignored, shape errors", "[cross_entropy][errors]") {
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(3, 5), dx(3, 5);
  x.setConstant(0.5f);
  dx.setConstant(9.f);
  Eigen::Tensor<I64, 1> t(3);
  t.setValues({1, 7, 2});
  CrossEntropyLoss<float> ce;
  REQUIRE_THROWS_AS(ce.forward_backward(x, t, dx), std::out_of_range);
  try {
    ce.forward_backward(x, t, dx);
  } catch (const std::out_of_range& e) {
    const std::string what = e.what();
    INFO(what);
    REQUIRE(what.find("target[1] = 7") != std::string::npos);
    REQUIRE(what.find("C = 5") != std::string::npos);
  }
  REQUIRE(dx(0, 0) == 9.f);  // nothing written
  t.setValues({1, -1, 2});
  REQUIRE_THROWS_AS(ce.forward(x, t), std::out_of_range);
  t.setValues({1, 5, 2});
  REQUIRE_THROWS_AS(ce.forward(x, t), std::out_of_range);
  // all ignored: Mean is NaN (0 / 0, as PyTorch), dlogits 0; Sum is 0
  t.setValues({-100, -100, -100});
  const auto l = ce.forward_backward(x, t, dx);
  REQUIRE(std::isnan(l(0)));
  for (Index i = 0; i < dx.size(); ++i) REQUIRE(dx.data()[i] == 0.f);
  REQUIRE(CrossEntropyLoss<float>({-100, 0.0, Reduction::Sum}).forward(x, t)(0) == 0.f);
  // shapes
  t.setValues({0, 1, 2});
  ce.weight() = Eigen::Tensor<float, 1>(4);
  ce.weight().setConstant(1.f);
  REQUIRE_THROWS_AS(ce.forward(x, t), normkit::shape_error);
  ce.weight() = Eigen::Tensor<float, 1>(5);
  ce.weight().setConstant(1.f);
  REQUIRE_NOTHROW(ce.forward(x, t));
  Eigen::Tensor<float, 1> dl2(2);
  dl2.setConstant(1.f);
  REQUIRE_THROWS_AS(ce.backward(x, t, dl2, dx), normkit::shape_error);
  REQUIRE_THROWS_AS(CrossEntropyLoss<float>({-100, 0.0, Reduction::None}).backward(x, t, dl2, dx),
                    normkit::shape_error);
  Eigen::Tensor<I64, 1> t4(4);
  t4.setZero();
  REQUIRE_THROWS_AS(ce.forward(x, t4), normkit::shape_error);
  Eigen::Tensor<float, 2, Eigen::RowMajor> dx_bad(3, 4);
  REQUIRE_THROWS_AS(ce.forward_backward(x, t, dx_bad), normkit::shape_error);
  REQUIRE_THROWS_AS(CrossEntropyLoss<float>({-100, 1.5, Reduction::Mean}), std::invalid_argument);
}

TEST_CASE("cross-entropy: logits of any magnitude, -Inf, NaN in one row", "[cross_entropy][numerics]") {
  const float inf = std::numeric_limits<float>::infinity();
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(5, 40), dx(5, 40);
  for (Index c = 0; c < 40; ++c) {
    x(0, c) = 1e30f;
    x(1, c) = c % 2 ? 1e30f : -1e30f;
    x(2, c) = c == 7 ? 3e38f : 0.f;
    x(3, c) = c % 3 ? -inf : float(c) * 0.1f;
    x(4, c) = float(c) * 0.01f;
  }
  Eigen::Tensor<I64, 1> t(5);
  t.setValues({3, 1, 7, 3, 20});
  CrossEntropyLoss<float> ce({-100, 0.0, Reduction::None});
  const auto l = ce.forward(x, t);
  for (Index r = 0; r < 5; ++r) REQUIRE(std::isfinite(l(r)));
  REQUIRE(std::fabs(l(0) - std::log(40.f)) < 1e-5f);
  REQUIRE(std::fabs(l(1) - std::log(20.f)) < 1e-5f);
  REQUIRE(l(2) == 0.f);
  // dlogits finite too
  Eigen::Tensor<float, 1> ones(5);
  ones.setConstant(1.f);
  ce.backward(x, t, ones, dx);
  for (Index i = 0; i < dx.size(); ++i) REQUIRE(std::isfinite(dx.data()[i]));
  // NaN in row 4 poisons row 4 only
  Eigen::Tensor<float, 2, Eigen::RowMajor> xn = x, dxn(5, 40);
  xn(4, 33) = std::numeric_limits<float>::quiet_NaN();
  const auto ln = ce.forward(xn, t);
  ce.backward(xn, t, ones, dxn);
  for (Index r = 0; r < 4; ++r) REQUIRE(same_bits(ln(r), l(r)));
  REQUIRE(std::isnan(ln(4)));
  for (Index c = 0; c < 40; ++c) {
    REQUIRE(std::isnan(dxn(4, c)));
    for (Index r = 0; r < 4; ++r) REQUIRE(same_bits(dxn(r, c), dx(r, c)));
  }
  REQUIRE(std::isnan(CrossEntropyLoss<float>().forward(xn, t)(0)));
}

// A confident, correct prediction has loss log S = log1p(rest), rest = sum of exp(x[c] - x[t]) far
// below 1: its digits are those of rest, which a sum in float (or in double, for rest < 2^-53) loses.
TEST_CASE("cross-entropy: the loss of a dominant target keeps its digits", "[cross_entropy][numerics]") {
  for (Index C : {100, 1000}) {
    const std::vector<float> margins{10, 20, 30, 40, 60};
    const Index N = Index(margins.size());
    Eigen::Tensor<float, 2, Eigen::RowMajor> x(N, C), dx(N, C);
    Eigen::Tensor<I64, 1> t(N);
    std::vector<double> want(std::size_t(N), 0.0);
    for (Index r = 0; r < N; ++r) {
      t(r) = (r * 37) % C;
      for (Index c = 0; c < C; ++c) x(r, c) = c == t(r) ? margins[std::size_t(r)] : float(c % 7) * 0.25f - 1;
      for (Index c = 0; c < C; ++c)
        if (c != t(r)) want[std::size_t(r)] += std::exp(double(x(r, c)) - double(x(r, t(r))));
      want[std::size_t(r)] = std::log1p(want[std::size_t(r)]);
    }
    CrossEntropyLoss<float> ce({-100, 0.0, Reduction::None});
    const auto loss = ce.forward(x, t);
    const auto fused = ce.forward_backward(x, t, dx);
    for (Index r = 0; r < N; ++r) {
      const float w = static_cast<float>(want[std::size_t(r)]);
      const double ulp = double(std::nextafter(w, 1.0f) - w);
      INFO("C " << C << " margin " << margins[std::size_t(r)] << " want " << want[std::size_t(r)] << " forward "
                << loss(r) << " forward_backward " << fused(r));
      REQUIRE(std::fabs(double(loss(r)) - want[std::size_t(r)]) <= 2 * ulp);
      REQUIRE(std::fabs(double(fused(r)) - want[std::size_t(r)]) <= 2 * ulp);
    }
  }
}

TEST_CASE("cross-entropy: invariance to the thread count; bfloat16 with float weights", "[cross_entropy][invariance]") {
  Eigen::ThreadPool pool(4);
  {
    const Index N = 300, C = 4099;
    const Vec v = normal_vec(std::size_t(N * C), 81, 0.0, 3.0);
    Eigen::Tensor<float, 2, Eigen::RowMajor> x(N, C), d1(N, C), dk(N, C);
    for (Index i = 0; i < N * C; ++i) x.data()[i] = float(v[std::size_t(i)]);
    const std::vector<I64> t = targets(std::size_t(N), C, 82, -100, 5);
    Eigen::Tensor<I64, 1> tt(N);
    for (Index i = 0; i < N; ++i) tt(i) = t[std::size_t(i)];
    CrossEntropyLoss<float> ce({-100, 0.1, Reduction::Mean});
    const auto l1 = ce.forward_backward(x, tt, d1);
    for (int threads = 1; threads <= 4; ++threads) {
      Eigen::ThreadPoolDevice device(&pool, threads);
      const auto lk = ce.forward_backward(device, x, tt, dk);
      REQUIRE(same_bits(l1(0), lk(0)));
      REQUIRE(bits_equal(d1, dk));
    }
  }
  {  // (N, C, d): the class axis strided
    const Index N = 4, C = 300, D = 700;
    const Vec v = normal_vec(std::size_t(N * C * D), 83);
    Eigen::Tensor<float, 3, Eigen::RowMajor> x(N, C, D), d1(N, C, D), dk(N, C, D);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = float(v[std::size_t(i)]);
    const std::vector<I64> t = targets(std::size_t(N * D), C, 84, -100, 0);
    Eigen::Tensor<I64, 2, Eigen::RowMajor> tt(N, D);
    for (Index i = 0; i < tt.size(); ++i) tt.data()[i] = t[std::size_t(i)];
    CrossEntropyLoss<float> ce;
    const auto l1 = ce.forward_backward(x, tt, d1);
    for (int threads = 2; threads <= 4; ++threads) {
      Eigen::ThreadPoolDevice device(&pool, threads);
      const auto lk = ce.forward_backward(device, x, tt, dk);
      REQUIRE(same_bits(l1(0), lk(0)));
      REQUIRE(bits_equal(d1, dk));
    }
  }
  {  // bfloat16 logits, float weights: against the float64 reference of the bfloat16 inputs
    const Index N = 6, C = 77;
    const Vec x = round_to<Eigen::bfloat16>(normal_vec(std::size_t(N * C), 85, 0.0, 2.0));
    const std::vector<I64> t = targets(std::size_t(N), C, 86, -100, 0);
    const Vec w = uniform_vec(std::size_t(C), 87, 0.5, 1.5);
    CrossEntropyLoss<Eigen::bfloat16, float> ce({-100, 0.05, Reduction::Mean});
    ce.weight() = Eigen::Tensor<float, 1>(C);
    set_vec1(ce.weight(), round_to<float>(w));
    const auto xt = make_tensor<Eigen::bfloat16, 2, Eigen::RowMajor>({N, C}, x);
    Eigen::Tensor<I64, 1> tt(N);
    for (Index i = 0; i < N; ++i) tt(i) = t[std::size_t(i)];
    Eigen::Tensor<Eigen::bfloat16, 2, Eigen::RowMajor> dx(N, C);
    const auto l = ce.forward_backward(xt, tt, dx);
    const Ref ref = reference(x, N, C, 1, t, round_to<float>(w), 0.05, -100, Reduction::Mean, {1});
    REQUIRE(std::fabs(double(l(0)) - ref.total) < 1e-5 * (1 + ref.total));
    const Vec got = to_rowmajor(dx);
    for (std::size_t k = 0; k < got.size(); ++k)
      REQUIRE(std::fabs(got[k] - ref.dlogits[k]) <= std::fabs(ref.dlogits[k]) * (1.0 / 256) + 1e-30);
  }
}
