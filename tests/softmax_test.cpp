// Softmax and LogSoftmax (softmax.hpp): against float64 references written here, for every axis,
// rank 1-4, both layouts and every type; finite differences of backward in double; the numerics the
// contract promises (huge logits, -Inf, all -Inf, NaN/+Inf isolation); ulps of float against
// float64 (the measured maximum is printed); bfloat16/half rounded once; invariance (thread count,
// a row's position and alignment); in place; errors.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

using namespace nkref;
using normkit::LogSoftmax;
using normkit::Softmax;
using normkit::SoftmaxOptions;

namespace {

// Reference over `axis` of a row-major vector with dims d: softmax or log-softmax in float64.
Vec ref_forward(const Vec& x, const std::vector<Index>& d, std::size_t axis, bool log) {
  const Index C = d[axis], inner = product(d, axis + 1, d.size()), outer = product(d, 0, axis);
  Vec y(x.size());
  for (Index o = 0; o < outer; ++o)
    for (Index i = 0; i < inner; ++i) {
      const auto at = [&](Index c) { return static_cast<std::size_t>((o * C + c) * inner + i); };
      double m = -INFINITY;
      for (Index c = 0; c < C; ++c) m = std::max(m, x[at(c)]);
      bool nan = false;
      for (Index c = 0; c < C; ++c) nan = nan || std::isnan(x[at(c)]) || x[at(c)] == INFINITY;
      // S = 1 + rest (the max's own term is 1): log S as log1p(rest), so that a dominant value's
      // log-probability -log S keeps its digits
      Index top = 0;
      for (Index c = 0; c < C; ++c)
        if (x[at(c)] == m) top = c;
      double rest = 0;
      for (Index c = 0; c < C; ++c)
        if (c != top) rest += std::exp(x[at(c)] - m);
      const double s = 1 + rest, ls = std::log1p(rest);
      for (Index c = 0; c < C; ++c) {
        double v = log ? x[at(c)] - m - ls : std::exp(x[at(c)] - m) / s;
        if (nan || m == -INFINITY) v = NAN;
        y[at(c)] = v;
      }
    }
  return y;
}

Vec ref_backward(const Vec& y, const Vec& dy, const std::vector<Index>& d, std::size_t axis, bool log) {
  const Index C = d[axis], inner = product(d, axis + 1, d.size()), outer = product(d, 0, axis);
  Vec dx(y.size());
  for (Index o = 0; o < outer; ++o)
    for (Index i = 0; i < inner; ++i) {
      const auto at = [&](Index c) { return static_cast<std::size_t>((o * C + c) * inner + i); };
      double s = 0;
      for (Index c = 0; c < C; ++c) s += log ? dy[at(c)] : dy[at(c)] * y[at(c)];
      for (Index c = 0; c < C; ++c) dx[at(c)] = log ? dy[at(c)] - std::exp(y[at(c)]) * s : y[at(c)] * (dy[at(c)] - s);
    }
  return dx;
}

// ulps of got against the float64 want, in units of T at want's magnitude (subnormals: T's spacing
// there).
template <class T>
double ulps(double got, double want) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got) ? 0 : 1e30;
  if (got == want) return 0;
  constexpr int digits = std::is_same_v<T, double>        ? 53
                         : std::is_same_v<T, float>       ? 24
                         : std::is_same_v<T, Eigen::half> ? 11
                                                          : 8;
  constexpr int min_exp = std::is_same_v<T, double> ? -1021 : std::is_same_v<T, Eigen::half> ? -13 : -125;
  int e = 0;
  std::frexp(std::fabs(want), &e);  // |want| in [2^(e-1), 2^e)
  return std::fabs(got - want) / std::ldexp(1.0, std::max(e, min_exp) - digits);
}

template <class Fn, int L, std::size_t R>
Vec run_forward(const Fn& fn, const std::array<Index, R>& dims, const Vec& x) {
  using T = typename std::decay_t<decltype(fn)>::value_type;
  auto xt = make_tensor<T, int(R), L>(dims, x);
  Eigen::Tensor<T, int(R), L> y(dims);
  fn.forward(xt, y);
  return to_rowmajor(y);
}

template <class T, bool Log>
struct Fn : std::conditional_t<Log, LogSoftmax<T>, Softmax<T>> {
  using value_type = T;
  using Base = std::conditional_t<Log, LogSoftmax<T>, Softmax<T>>;
  explicit Fn(Index axis) : Base(SoftmaxOptions{axis}) {}
};

// Every axis of dims, both layouts: forward within tol ulps (T) or rel (double), backward to the
// reference backward of the reference y.
template <class T, bool Log, std::size_t R>
double check_all_axes(const std::array<Index, R>& dims, std::uint32_t seed, double scale) {
  std::vector<Index> d(dims.begin(), dims.end());
  const Vec x = round_to<T>(normal_vec(static_cast<std::size_t>(product(d)), seed, 0.0, scale));
  double worst = 0;
  for (std::size_t axis = 0; axis < R; ++axis) {
    const Vec want = ref_forward(x, d, axis, Log);
    const Fn<T, Log> fn(Index(axis) - (axis % 2 ? Index(R) : 0));  // negative axes too
    for (const Vec& got : {run_forward<Fn<T, Log>, Eigen::RowMajor>(fn, dims, x),
                           run_forward<Fn<T, Log>, Eigen::ColMajor>(fn, dims, x)}) {
      for (std::size_t k = 0; k < got.size(); ++k) {
        // outputs below T's normal range are compared absolutely
        if (std::fabs(want[k]) < 1e4 * static_cast<double>((std::numeric_limits<T>::min)())) {
          REQUIRE(std::fabs(got[k] - want[k]) < 1e4 * static_cast<double>((std::numeric_limits<T>::min)()));
          continue;
        }
        const double u = ulps<T>(got[k], want[k]);
        worst = std::max(worst, u);
        // float: 2.5 ulps of the float64 value. Measured maxima: softmax 1.73, log-softmax 1.95 (g++
        // -O3, AVX-512, 2026-12-07), 2.13 (SSE4.2 without FMA: the exp polynomial's products rounded;
        // and clang-14 at x86-64-v3, whose contraction choices differ from g++'s). double: 64, the
        // float64 reference (x - max of double data is rounded) being no more precise than the code.
        const double float_limit = 2.5;
        const double limit = std::is_same_v<T, double> ? 64.0 : float_limit;
        if (u > limit) {
          INFO("T " << sizeof(T) << " log " << Log << " dims " << d.size() << " axis " << axis << " k " << k << " got "
                    << got[k] << " want " << want[k] << " ulps " << u);
          REQUIRE(u <= limit);
        }
      }
    }
    // backward from y of T (what a caller holds)
    const Vec yT = round_to<T>(want), dy = round_to<T>(normal_vec(x.size(), seed + 7));
    const Vec dwant = ref_backward(yT, dy, d, axis, Log);
    Vec scale_v(x.size());
    const auto yt = make_tensor<T, int(R), Eigen::RowMajor>(dims, yT);
    for (int layout = 0; layout < 2; ++layout) {
      Vec got;
      if (layout == 0) {
        const auto dyt = make_tensor<T, int(R), Eigen::RowMajor>(dims, dy);
        Eigen::Tensor<T, int(R), Eigen::RowMajor> dx(dims);
        fn.backward(yt, dyt, dx);
        got = to_rowmajor(dx);
      } else {
        const auto ytc = make_tensor<T, int(R), Eigen::ColMajor>(dims, yT);
        const auto dyt = make_tensor<T, int(R), Eigen::ColMajor>(dims, dy);
        Eigen::Tensor<T, int(R), Eigen::ColMajor> dx(dims);
        fn.backward(ytc, dyt, dx);
        got = to_rowmajor(dx);
      }
      const double eps = static_cast<double>(Eigen::NumTraits<T>::epsilon());
      const Index C = d[axis];
      for (std::size_t k = 0; k < got.size(); ++k) {
        const double tol = 8 * eps * (std::fabs(dy[k]) + 1) * (Log ? double(C) : 4.0) + 1e-300;
        if (!(std::fabs(got[k] - dwant[k]) <= tol)) {
          INFO("backward axis " << axis << " layout " << layout << " k " << k << " got " << got[k] << " want "
                                << dwant[k]);
          REQUIRE(std::fabs(got[k] - dwant[k]) <= tol);
        }
      }
    }
  }
  return worst;
}

}  // namespace

TEST_CASE("softmax and log-softmax: float64 references, every axis, rank 1-4, both layouts", "[softmax]") {
  double worst_s = 0, worst_l = 0;
  for (double scale : {1.0, 4.0, 12.0}) {
    worst_s = std::max(worst_s, check_all_axes<float, false>(std::array<Index, 1>{37}, 1, scale));
    worst_l = std::max(worst_l, check_all_axes<float, true>(std::array<Index, 1>{37}, 1, scale));
    worst_s = std::max(worst_s, check_all_axes<float, false>(std::array<Index, 2>{5, 1000}, 2, scale));
    worst_l = std::max(worst_l, check_all_axes<float, true>(std::array<Index, 2>{5, 1000}, 2, scale));
    worst_s = std::max(worst_s, check_all_axes<float, false>(std::array<Index, 3>{3, 17, 70}, 3, scale));
    worst_l = std::max(worst_l, check_all_axes<float, true>(std::array<Index, 3>{3, 17, 70}, 3, scale));
    worst_s = std::max(worst_s, check_all_axes<float, false>(std::array<Index, 4>{2, 3, 5, 33}, 4, scale));
    worst_l = std::max(worst_l, check_all_axes<float, true>(std::array<Index, 4>{2, 3, 5, 33}, 4, scale));
  }
  // long rows: the sum over 32000 classes
  worst_s = std::max(worst_s, check_all_axes<float, false>(std::array<Index, 2>{3, 32000}, 5, 3.0));
  worst_l = std::max(worst_l, check_all_axes<float, true>(std::array<Index, 2>{3, 32000}, 5, 3.0));
  std::printf("softmax float: max %.3f ulp, log-softmax float: max %.3f ulp (vs float64, %s)\n", worst_s, worst_l,
              normkit::simd_path());
  check_all_axes<double, false>(std::array<Index, 3>{3, 17, 70}, 6, 5.0);
  check_all_axes<double, true>(std::array<Index, 3>{3, 17, 70}, 6, 5.0);
}

// Rows longer than the scratch row (tuning::kSoftmaxScratchBytes) take two exponentials per value:
// the online max-and-sum pass, then the sweep's own exponential. Shorter rows (every other case
// here) take one, stored in the scratch row and scaled, where the target has FMA (kFusedMadd).
TEST_CASE("softmax: a row beyond the scratch row, two exponentials per value", "[softmax]") {
  const Index n = normkit::core::tuning::kSoftmaxScratchBytes / Index(sizeof(float)) + 37;
  const std::array<Index, 2> dims{1, n};
  const Vec x = round_to<float>(normal_vec(static_cast<std::size_t>(n), 11, 0.0, 3.0));
  const Vec want = ref_forward(x, {1, n}, 1, false);
  const Vec got = run_forward<Fn<float, false>, Eigen::RowMajor>(Fn<float, false>(1), dims, x);
  double worst = 0;
  for (std::size_t k = 0; k < got.size(); ++k) worst = std::max(worst, ulps<float>(got[k], want[k]));
  std::printf("softmax float, a row of %ld: max %.3f ulp\n", static_cast<long>(n), worst);
  REQUIRE(worst <= 2.5);  // the limit of the float64-reference test above
}

// Ascending logits raise the running max in every block, then in every remainder packet and tail
// value: each of the online pass's running sums must be rescaled every time (a sum left at the old
// max was missed by random data, whose max rarely falls in a row's last packets). Log-softmax takes
// the online pass at every length; softmax, the one-exponential path at these.
template <bool Log>
void check_rising_rows(Index n) {
  const std::array<Index, 2> dims{2, n};
  Vec x(std::size_t(2 * n));
  for (Index r = 0; r < 2; ++r)
    for (Index i = 0; i < n; ++i) x[std::size_t(r * n + i)] = double(float(0.05 * double(i) * double(r + 1)));
  const Vec want = ref_forward(x, std::vector<Index>(dims.begin(), dims.end()), 1, Log);
  const Vec got = run_forward<Fn<float, Log>, Eigen::RowMajor>(Fn<float, Log>(1), dims, x);
  for (std::size_t k = 0; k < got.size(); ++k) {
    if (std::fabs(want[k]) < 1e4 * double((std::numeric_limits<float>::min)())) continue;
    INFO("n " << n << " log " << Log << " k " << k << " got " << got[k] << " want " << want[k]);
    REQUIRE(ulps<float>(got[k], want[k]) <= 2.5);  // the limit of the float64-reference test above
  }
}

TEST_CASE("softmax: a max rising to the end of the row", "[softmax]") {
  for (const Index n : {Index(83), Index(1000), Index(4099)}) {
    check_rising_rows<false>(n);
    check_rising_rows<true>(n);
  }
}

TEST_CASE("softmax: the exp kernel within 1 ulp of float64 over [-87, 0]", "[softmax]") {
  double worst = 0;
  for (int i = 0; i <= 1 << 20; ++i) {
    const float x = -87.0f * static_cast<float>(i) / float(1 << 20);
    worst = std::max(worst, ulps<float>(normkit::core::simd::exp(x), std::exp(static_cast<double>(x))));
  }
  std::printf("exp float: max %.3f ulp over [-87, 0]\n", worst);
  REQUIRE(worst <= 1.0);
  REQUIRE(normkit::core::simd::exp(-INFINITY) == 0.0f);
  REQUIRE(normkit::core::simd::exp(-88.0f) == 0.0f);  // below the smallest normal: flushed
  REQUIRE(std::isnan(normkit::core::simd::exp(NAN)));
  REQUIRE(normkit::core::simd::exp(0.0f) == 1.0f);
}

// Softmax's sum of exponentials is kept in float with each addition's error (simd::UnitSum), moved
// to double every few packets. Its weak spot is many equal terms near ulp(1): their errors all have
// the same sign and pile up in the float compensation. Held to 2^-30 of the sum, far below the
// 2^-24 at which a float result would see it (it measures 2^-40 here with AVX-512 or AVX2, 2^-42
// with SSE; summing the same values in float alone is off by up to 2^-9 at 2^20 values).
TEST_CASE("softmax: the float sum of exponentials on terms that defeat it", "[softmax]") {
  using namespace normkit::core;
  constexpr Index W = simd::width<float>;
  for (const Index n : {Index(1000), Index(32007), Index(1) << 20})
    for (const float t : {0.3f * 0x1p-23f, 0.7f * 0x1p-23f, 1.3f * 0x1p-23f, 3e-5f, 0.1f, 1.0f / 3.0f}) {
      std::vector<float> e(static_cast<std::size_t>(n), t);
      e[7] = 1.0f;  // the max's own term
      simd::UnitSum sum;
      Index i = 0;
      for (; i + W <= n; i += W) sum.add(Eigen::internal::ploadu<simd::packet<float>>(e.data() + i));
      for (; i < n; ++i) sum.add(e[std::size_t(i)]);
      sum.flush();
      double parts[simd::WideSum::kParts];
      sum.wide.store(parts);
      long double got = 0, want = 0;
      for (double v : parts) got += v;
      for (float v : e) want += v;
      INFO("n " << n << " t " << t);
      REQUIRE(std::abs(double((got - want) / want)) <= 0x1p-30);
    }
}

TEST_CASE("softmax: bfloat16 and half rounded once from float", "[softmax]") {
  const std::array<Index, 2> dims{4, 515};
  const std::vector<Index> d(dims.begin(), dims.end());
  const auto check = [&](auto tag, bool log) {
    using T = decltype(tag);
    const Vec x = round_to<T>(normal_vec(4 * 515, 11, 0.0, 3.0));
    const Vec want = ref_forward(x, d, 1, log);
    Vec got;
    if (log) got = run_forward<Fn<T, true>, Eigen::RowMajor>(Fn<T, true>(1), dims, x);
    else got = run_forward<Fn<T, false>, Eigen::RowMajor>(Fn<T, false>(1), dims, x);
    for (std::size_t k = 0; k < got.size(); ++k) {
      if (std::fabs(want[k]) < 1e-30) continue;
      // rounded once from a float within 2 float ulps: at most one T ulp from the float64 value,
      // and equal to its rounding unless that lies within 2 float ulps of a tie
      INFO("k " << k << " got " << got[k] << " want " << want[k] << " log " << log);
      REQUIRE(ulps<T>(got[k], want[k]) <= 1.0);
    }
  };
  check(Eigen::bfloat16{}, false);
  check(Eigen::bfloat16{}, true);
  check(Eigen::half{}, false);
  check(Eigen::half{}, true);
}

TEST_CASE("softmax: finite differences of backward (double)", "[softmax]") {
  const std::array<Index, 3> dims{2, 5, 3};
  const std::vector<Index> d(dims.begin(), dims.end());
  const Vec x = normal_vec(30, 21), c = normal_vec(30, 22);
  for (bool log : {false, true})
    for (std::size_t axis = 0; axis < 3; ++axis) {
      const auto f = [&](const Vec& v) { return dot(c, ref_forward(v, d, axis, log)); };
      const Vec fd = fd_gradient(f, x, 1e-6);
      const Vec y = ref_forward(x, d, axis, log);
      const auto yt = make_tensor<double, 3, Eigen::RowMajor>(dims, y);
      const auto ct = make_tensor<double, 3, Eigen::RowMajor>(dims, c);
      Eigen::Tensor<double, 3, Eigen::RowMajor> dx(dims);
      if (log) LogSoftmax<double>({Index(axis)}).backward(yt, ct, dx);
      else Softmax<double>({Index(axis)}).backward(yt, ct, dx);
      const Vec got = to_rowmajor(dx);
      for (std::size_t k = 0; k < got.size(); ++k) REQUIRE(std::fabs(got[k] - fd[k]) < 1e-7);
    }
}

TEST_CASE("softmax: logits of any magnitude, -Inf, all -Inf, NaN and +Inf", "[softmax][numerics]") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const Index C = 37;  // packets and a tail
  std::vector<std::vector<float>> rows = {std::vector<float>(C, 1e30f),  std::vector<float>(C, -1e30f),
                                          std::vector<float>(C, 0.5f),   std::vector<float>(C, -inf),
                                          std::vector<float>(C, 0.25f),  std::vector<float>(C, 0.75f),
                                          std::vector<float>(C, 3.4e38f)};
  for (Index c = 0; c < C; c += 2) rows[2][std::size_t(c)] = c % 4 ? 1e30f : -1e30f;  // mixed
  rows[4][20] = 3e38f;                                                                // one huge logit
  for (Index c = 0; c < C; c += 3) rows[5][std::size_t(c)] = -inf;                    // masked classes
  rows[6][3] = -3.4e38f;                                                              // extremes
  Eigen::Tensor<float, 2, Eigen::RowMajor> x(Index(rows.size()), C), y(x.dimensions()), ly(x.dimensions());
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (Index c = 0; c < C; ++c) x(Index(r), c) = rows[r][std::size_t(c)];
  Softmax<float>().forward(x, y);
  LogSoftmax<float>().forward(x, ly);
  const std::vector<Index> d{Index(rows.size()), C};
  Vec xv = to_rowmajor(x);
  const Vec want = ref_forward(xv, d, 1, false), lwant = ref_forward(xv, d, 1, true);
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (Index c = 0; c < C; ++c) {
      const std::size_t k = r * std::size_t(C) + std::size_t(c);
      INFO("row " << r << " class " << c);
      if (r == 3) {  // all -Inf: NaN, as PyTorch
        REQUIRE(std::isnan(y(Index(r), c)));
        REQUIRE(std::isnan(ly(Index(r), c)));
        continue;
      }
      REQUIRE(std::isfinite(y(Index(r), c)));
      REQUIRE(std::fabs(double(y(Index(r), c)) - want[k]) <= 2e-7 * want[k] + 1e-40);
      if (std::fabs(lwant[k]) > 3.4028234663852886e38) REQUIRE(ly(Index(r), c) == -inf);  // beyond float
      else REQUIRE(std::fabs(double(ly(Index(r), c)) - lwant[k]) <= 2.5e-7 * std::fabs(lwant[k]) + 1e-30);
    }
  // NaN and +Inf poison their own row only: every other row bit-identical to a clean run.
  for (float bad : {nan, inf}) {
    Eigen::Tensor<float, 2, Eigen::RowMajor> xb(6, 1000), xc(6, 1000), yb(6, 1000), yc(6, 1000);
    const Vec v = normal_vec(6000, 31);
    for (Index i = 0; i < 6000; ++i) xb.data()[i] = xc.data()[i] = static_cast<float>(v[std::size_t(i)]);
    xb(2, 517) = bad;
    for (int log = 0; log < 2; ++log) {
      if (log) LogSoftmax<float>().forward(xb, yb), LogSoftmax<float>().forward(xc, yc);
      else Softmax<float>().forward(xb, yb), Softmax<float>().forward(xc, yc);
      for (Index r = 0; r < 6; ++r)
        for (Index c = 0; c < 1000; ++c) {
          if (r == 2) REQUIRE(std::isnan(yb(r, c)));
          else REQUIRE(same_bits(yb(r, c), yc(r, c)));
        }
      // and down columns (axis 0): a column poisons itself only
      Eigen::Tensor<float, 2, Eigen::RowMajor> zb(6, 1000), zc(6, 1000);
      Softmax<float>({0}).forward(xb, zb);
      Softmax<float>({0}).forward(xc, zc);
      for (Index r = 0; r < 6; ++r)
        for (Index c = 0; c < 1000; ++c) {
          if (c == 517) REQUIRE(std::isnan(zb(r, c)));
          else REQUIRE(same_bits(zb(r, c), zc(r, c)));
        }
    }
  }
}

TEST_CASE("softmax: invariance to the thread count, a row's position and its alignment", "[softmax][invariance]") {
  Eigen::ThreadPool pool(4);
  // big enough for several chunks and for streaming stores (8 MiB of output)
  for (Index C : {Index(32003), Index(1000)}) {
    const Index N = (Index(3) << 20) / C;
    const Vec v = normal_vec(std::size_t(N * C), 41, 0.0, 3.0);
    Eigen::Tensor<float, 2, Eigen::RowMajor> x(N, C), y1(N, C), yk(N, C);
    for (Index i = 0; i < N * C; ++i) x.data()[i] = static_cast<float>(v[std::size_t(i)]);
    for (int log = 0; log < 2; ++log)
      for (Index axis : {Index(1), Index(0)}) {
        const auto fwd = [&](auto&&... a) {
          if (log) LogSoftmax<float>({axis}).forward(a...);
          else Softmax<float>({axis}).forward(a...);
        };
        fwd(x, y1);
        for (int threads = 1; threads <= 4; ++threads) {
          Eigen::ThreadPoolDevice device(&pool, threads);
          yk.setZero();
          fwd(device, x, yk);
          REQUIRE(bits_equal(y1, yk));
        }
      }
    // a row's bits do not depend on where it sits: copy rows 0..3 to offsets 1..7 floats into a buffer
    Eigen::Tensor<float, 2, Eigen::RowMajor> ref(N, C);
    Softmax<float>().forward(x, ref);
    for (Index off = 1; off < 8; off += 3) {
      std::vector<float> in(std::size_t(N * C + off)), out(std::size_t(N * C + off));
      // rows shifted by one: row r of x becomes row r + 1 (row 0 is garbage)
      std::memcpy(in.data() + off + C, x.data(), sizeof(float) * std::size_t((N - 1) * C));
      for (Index c = 0; c < C; ++c) in[std::size_t(off + c)] = 100.f;
      Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> xm(in.data() + off, N, C), ym(out.data() + off, N, C);
      Softmax<float>().forward(xm, ym);
      REQUIRE(std::memcmp(out.data() + off + C, ref.data(), sizeof(float) * std::size_t((N - 1) * C)) == 0);
    }
  }
}

TEST_CASE("softmax: in place gives the bits of out of place", "[softmax][in_place]") {
  for (Index axis : {Index(-1), Index(0), Index(1)}) {
    const Vec v = normal_vec(7 * 300 * 5, 51, 0.0, 2.0);
    Eigen::Tensor<float, 3, Eigen::RowMajor> x(7, 300, 5), y(7, 300, 5), dy(7, 300, 5), dx(7, 300, 5);
    Eigen::Tensor<float, 3, Eigen::ColMajor> xc(7, 300, 5), yc(7, 300, 5);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = xc.data()[i] = static_cast<float>(v[std::size_t(i)]);
    for (Index i = 0; i < x.size(); ++i) dy.data()[i] = static_cast<float>(v[std::size_t(x.size() - 1 - i)]);
    for (int log = 0; log < 2; ++log) {
      const auto run = [&](auto& fn) {
        fn.forward(x, y);
        Eigen::Tensor<float, 3, Eigen::RowMajor> z = x;
        fn.forward(z, z);
        REQUIRE(bits_equal(y, z));
        fn.forward(xc, yc);
        Eigen::Tensor<float, 3, Eigen::ColMajor> zc = xc;
        fn.forward(zc, zc);
        REQUIRE(bits_equal(yc, zc));
        fn.backward(y, dy, dx);
        Eigen::Tensor<float, 3, Eigen::RowMajor> g = dy;
        fn.backward(y, g, g);
        REQUIRE(bits_equal(dx, g));
      };
      if (log) {
        LogSoftmax<float> fn({axis});
        run(fn);
      } else {
        Softmax<float> fn({axis});
        run(fn);
      }
    }
  }
}

TEST_CASE("softmax: layouts of y and dy may differ from x's; errors", "[softmax][errors]") {
  const Vec v = normal_vec(4 * 9, 61);
  auto x = make_tensor<float, 2, Eigen::RowMajor>({4, 9}, v);
  Eigen::Tensor<float, 2, Eigen::RowMajor> y(4, 9);
  Eigen::Tensor<float, 2, Eigen::ColMajor> yc(4, 9);
  Softmax<float>().forward(x, y);
  Softmax<float>().forward(x, yc);
  REQUIRE(to_rowmajor(y) == to_rowmajor(yc));
  // operator()
  auto y2 = Softmax<float>()(x);
  REQUIRE(bits_equal(y, y2));
  // errors before any write
  Eigen::Tensor<float, 2, Eigen::RowMajor> bad(4, 8);
  bad.setConstant(7.f);
  REQUIRE_THROWS_AS(Softmax<float>().forward(x, bad), normkit::shape_error);
  REQUIRE(bad(0, 0) == 7.f);
  REQUIRE_THROWS_AS(Softmax<float>({2}).forward(x, y), std::invalid_argument);
  REQUIRE_THROWS_AS(LogSoftmax<float>({-3}).forward(x, y), std::invalid_argument);
  REQUIRE_THROWS_AS(Softmax<float>().backward(y, bad, y), normkit::shape_error);
  try {
    Softmax<float>().forward(x, bad);
  } catch (const normkit::shape_error& e) {
    REQUIRE(std::string(e.what()).find("normkit::Softmax::forward") == 0);
  }
  // empty tensors are a no-op
  Eigen::Tensor<float, 2, Eigen::RowMajor> e0(0, 5), e1(0, 5);
  Softmax<float>().forward(e0, e1);
}
