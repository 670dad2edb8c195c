// tests/properties_test.cpp — properties that hold for every input, checked on many random inputs
// (seeded std::mt19937, so every run sees the same cases; INFO names the case on failure).
//
//  1. Invariance: LayerNorm(a x + b) = LayerNorm(x) (a > 0), RMSNorm(a x) = RMSNorm(x), BatchNorm in
//     training (batch statistics) is unchanged by x[:, c] -> a_c x[:, c] + b_c, NCHW and channels-last.
//  2. Before the affine step: LayerNorm rows have mean 0 and variance 1, RMSNorm rows mean square 1,
//     BatchNorm channels mean 0 and variance 1.
//  3. Backward: sum(dx) = 0 over a LayerNorm row / BatchNorm channel, and <dx, xhat> has a closed form
//     that is 0 when eps = 0 (derived below).
//  4. Results do not depend on RowMajor vs ColMajor, on the thread count, or on the alignment of the
//     data pointers.
//
// Notation: G = values per group (features of a row, or N*H*W values of a channel), r = rstd,
// xhat = (x - mean) * r, g = dy * weight (weight = 1 when absent). epsT = std::numeric_limits<T>::
// epsilon() (2^-23 for float, 2^-52 for double), so one rounding costs at most epsT/2 relative.
// The "truth" (mean, var, r, xhat) is computed in long double from the T values the library sees.
//
// Why the identities hold (exact arithmetic)
// ------------------------------------------
// Scaling: var(a x + b) = a^2 var(x), so (var + eps) of a x + b is a^2 (var(x) + eps / a^2) and
//   sqrt(var) + eps is a (sqrt(var(x)) + eps / a). Hence, for a > 0,
//     LayerNorm_eps(a x + b) = LayerNorm_{eps/a^2}(x)   (InsideSqrt;  eps/a for OutsideSqrt)
//     RMSNorm_eps(a x)       = RMSNorm_{eps/a^2}(x)     (the same with mean(x^2) for var)
//   With eps = 0 this is plain invariance; with eps > 0 the test gives the reference run eps/a^2 (or
//   eps/a) so that random eps is covered too. BatchNorm is the same per channel; with eps = 0 every
//   channel gets its own a_c, with eps > 0 all channels share a (there is one eps) and b_c differs.
// Backward (y = xhat * w + b, J = dy/dx with w, b fixed, dx = J^T dy):
//   * LayerNorm and BatchNorm (per channel) are translation invariant, y(x + t 1) = y(x) for any t and
//     any eps, so J 1 = 0 and sum(dx) = <dy, J 1> = 0.
//   * Scaling the centred input: d/ds xhat(mean + s (x - mean)) at s = 1 is xhat * eps * r^2
//     (InsideSqrt: d/ds s/sqrt(s^2 var + eps) = eps r^3) or xhat * eps * r (OutsideSqrt: d/ds
//     s/(s sigma + eps) = eps r^2). So J (x - mean) = w * xhat * eps r^2 (resp. eps r), and
//       <dx, xhat> = r <dy, J (x - mean)> = eps r^3 sum(g xhat)   (InsideSqrt)
//                                          = eps r^2 sum(g xhat)   (OutsideSqrt),
//     which is 0 when eps = 0 (then y is scale invariant). Checked against the closed formula
//     dx = r (g - mean(g) - xhat mean(g xhat)): <dx, xhat> = r sum(g xhat) (1 - var r^2) and
//     1 - var r^2 = eps r^2. RMSNorm is the same with mean = 0 (no translation invariance, so no
//     sum(dx) = 0, only <dx, xhat>); BatchNorm always has eps inside, and g = w_c dy.
//
// Tolerances and where they come from
// -----------------------------------
// Sums: normkit sums a group's G terms in a few SIMD accumulators (or sequentially down a column); any
// such order has a worst-case relative error of about G * epsT/2 of the sum of |terms| (Higham's
// gamma_G). A group's statistics therefore carry relative errors up to ~(G + 8) * epsT/2 in rstd
// (the 8 covers the handful of single roundings: square, divide, sqrt, cast) and, in the mean, up to
// ~(G + 8) * epsT/2 of sigma. Rounding x - mean costs epsT/2 of |x|, i.e. of kappa = max|x| * r in
// units of xhat: kappa is the conditioning of the group (large when |mean| >> sigma).
//  * y of two correct computations (two layouts, two thread counts, x against fl(a x + b)):
//      |y_j - y'_j| <= epsT * ( |w_j| ((2 + |xhat_j|) K + (G + 8)(1 + |xhat_j|)) + |y_j| + |b_j| )
//    K = sum of the two runs' kappa. The (2 + |xhat|) K term is the first-order effect of rounding the
//    inputs (perturbation e with |e_j| <= epsT/2 |x_j| moves xhat_j by r (e_j - mean(e) - xhat_j
//    mean(xhat e)), at most (2 + |xhat_j|) r max|e|); the (G + 8)(1 + |xhat|) term is the statistics;
//    |y| + |b| the final rounding. A wrong formula is off by O(1) in xhat (O(1e-3) relative at least,
//    e.g. unbiased vs biased variance at G = 300), while this is ~4e-5 for float at G = 300, kappa 1.
//  * Normalized moments: |mean(y)| <= epsT (kappa + G + 8) (the mean's error, in units of sigma, plus
//    the per-element roundings averaged), |var(y) - 1| and |mean(y^2) - 1| <= epsT (G + 16) (twice
//    rstd's relative error plus the roundings of each y). Biased/unbiased confusion is 1/G >> that.
//  * Backward identities are checked relative to the natural scale: with s_j = r (|g_j| + mean|g| +
//    f (1 + |xhat_j|)(mean|g xhat| + mean|g|)) (f = 1/(sigma r), 1 for InsideSqrt) bounding the size of
//    the terms that make up dx_j and the effect of the errors of its coefficients,
//      |<dx, v> - exact| <= epsT (G + kappa + 8) |s|_2 |v|_2   for v = 1 and v = xhat.
//    By Cauchy-Schwarz, per-element errors e_j <= c epsT s_j contribute at most c epsT |s| |v|; the
//    coefficients mean(g) and mean(g xhat) are sums with errors up to G epsT/2 of their |terms|, which
//    add coherently over the group (hence G); kappa is the error of the mean in sum(xhat).
//    Dropping a term or flipping a sign gives |<dx, 1>| or |<dx, xhat>| of order |s| |v| / sqrt(G) or
//    more (dy has a random offset, so sum(g) is not small).
//  * dx of two correct computations: epsT (G + 2 kappa + 8) s_j. dweight/dbias (sums of n terms over
//    the other axes): epsT (n + G + 2 kappa + 8) sum|dy|(1 + |xhat|) and epsT (n + 2) sum|dy|.
//  * Bitwise equality is asserted where the code computes each value by the same operations in the
//    same order whatever the layout of memory around it (see each test for why). Setting the
//    environment variable NORMKIT_PROPS_MARGINS=1 prints the worst error/tolerance of every check.
#include <normkit/normkit.hpp>

#include <catch2/catch.hpp>

#include "support/reference.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace nkref;
using normkit::EpsPlacement;

namespace {

constexpr int kRow = Eigen::RowMajor;
constexpr int kCol = Eigen::ColMajor;
using LD = long double;

template <class T>
double eps_of() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

template <class T>
const char* type_name() {
  return sizeof(T) == 4 ? "float" : "double";
}

const char* layout_name(int l) { return l == kRow ? "RowMajor" : "ColMajor"; }

// ---------------------------------------------------------------------------------------------------
// Worst error/tolerance per check, printed at exit when NORMKIT_PROPS_MARGINS is set.
// ---------------------------------------------------------------------------------------------------

struct Margins {
  std::map<std::string, double> worst;
  ~Margins() {
    if (!std::getenv("NORMKIT_PROPS_MARGINS")) return;
    for (const auto& [what, ratio] : worst) std::printf("  %-58s worst error/tolerance %.3g\n", what.c_str(), ratio);
  }
};
Margins& margins() {
  static Margins m;
  return m;
}
void note(const std::string& what, double ratio) {
  double& w = margins().worst[what];
  w = std::max(w, ratio);
}

// |got_i - want_i| <= tol_i for every i (NaN only against NaN).
void check_close(const Vec& got, const Vec& want, const Vec& tol, const std::string& what) {
  const Mismatch m = compare_tol(
      got, want, [&](std::size_t i) { return tol[i]; }, what);
  note(what, m.ratio);
  INFO(m.str());
  CHECK(m.ok);
}

// Bit-identical values (the Vecs hold T values converted to double, which is exact and one-to-one).
void check_bits(const Vec& got, const Vec& want, const std::string& what) {
  std::size_t bad = 0, first = 0;
  if (got.size() == want.size()) {
    for (std::size_t i = 0; i < got.size(); ++i)
      if (std::memcmp(&got[i], &want[i], sizeof(double)) != 0 && bad++ == 0) first = i;
  }
  note(what + " (bitwise: differing entries)", static_cast<double>(bad));
  INFO(what << ": sizes " << got.size() << " vs " << want.size() << ", " << bad << " entries differ; first at " << first
            << ": " << (bad ? got[first] : 0.0) << " vs " << (bad ? want[first] : 0.0));
  CHECK(got.size() == want.size());
  CHECK(bad == 0);
}

// A scalar bound: value <= tol.
void check_le(double value, double tol, const std::string& what) {
  note(what, tol > 0 ? value / tol : (value > 0 ? INFINITY : 0.0));
  INFO(what << ": " << value << " vs tolerance " << tol);
  CHECK(value <= tol);
}

// ---------------------------------------------------------------------------------------------------
// Random choices
// ---------------------------------------------------------------------------------------------------

struct Rng {
  std::mt19937 gen;
  explicit Rng(std::uint32_t seed) : gen(seed) {}
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  Index integer(Index lo, Index hi) { return std::uniform_int_distribution<Index>(lo, hi)(gen); }  // [lo, hi]
  bool coin(double p = 0.5) { return uniform(0.0, 1.0) < p; }
  double log_uniform(double lo, double hi) { return std::pow(10.0, uniform(std::log10(lo), std::log10(hi))); }
  std::uint32_t seed() { return static_cast<std::uint32_t>(gen()); }
};

// Features in [2, 300]; a third of the time a size around the SIMD widths (tails of 1..15 values).
Index pick_features(Rng& rng) {
  static const Index special[] = {2, 3, 7, 15, 16, 17, 31, 33, 37, 63, 64, 65, 100, 127, 129, 255, 257, 299, 300};
  const Index count = Index(sizeof(special) / sizeof(special[0]));
  return rng.coin(1.0 / 3) ? special[rng.integer(0, count - 1)] : rng.integer(2, 300);
}

// x = mu + sigma * N(0,1), rounded to T.
template <class T>
Vec random_data(Rng& rng, std::size_t n, double mu, double sigma) {
  return round_to<T>(normal_vec(n, rng.seed(), mu, sigma));
}

// dy = offset + scale * N(0,1): the offset makes sum(g) large, so that a missing mean(g) term shows.
template <class T>
Vec random_dy(Rng& rng, std::size_t n) {
  const double scale = rng.log_uniform(1e-2, 1e2);
  return round_to<T>(normal_vec(n, rng.seed(), scale * rng.uniform(-2.0, 2.0), scale));
}

template <class Fn>
void randomize_params(Fn& fn, Rng& rng) {
  using T = typename std::decay_t<decltype(fn.weight())>::Scalar;
  const auto nw = static_cast<std::size_t>(fn.weight().size());
  const auto nb = static_cast<std::size_t>(fn.bias().size());
  if (nw) set_vec1(fn.weight(), round_to<T>(uniform_vec(nw, rng.seed(), -1.5, 1.5)));
  if (nb) set_vec1(fn.bias(), round_to<T>(normal_vec(nb, rng.seed(), 0.0, 0.5)));
}

// ---------------------------------------------------------------------------------------------------
// Groups of a row-major (PyTorch-ordered) buffer, and their long-double truth
// ---------------------------------------------------------------------------------------------------

struct GroupMap {
  std::vector<std::vector<std::size_t>> members;  // row-major linear indices of each group's values
  std::vector<std::size_t> group_of;              // per element
  std::vector<std::size_t> param_of;              // per element: its index into weight/bias
  std::size_t params = 0;
  bool centered = true;
  std::size_t group_size() const { return members.empty() ? 0 : members[0].size(); }
};

// LayerNorm/RMSNorm over the last axis of (rows, F).
GroupMap rows_map(Index rows, Index F, bool centered) {
  GroupMap m;
  m.centered = centered;
  m.params = static_cast<std::size_t>(F);
  m.members.resize(static_cast<std::size_t>(rows));
  for (std::size_t k = 0; k < static_cast<std::size_t>(rows * F); ++k) {
    const std::size_t g = k / static_cast<std::size_t>(F);
    m.members[g].push_back(k);
    m.group_of.push_back(g);
    m.param_of.push_back(k % static_cast<std::size_t>(F));
  }
  return m;
}

// BatchNorm channels of (N, C, H, W), or of (N, H, W, C) when channels_last.
GroupMap channel_map(const std::array<Index, 4>& dims, bool channels_last) {
  GroupMap m;
  const auto n = static_cast<std::size_t>(dims[0] * dims[1] * dims[2] * dims[3]);
  const auto C = static_cast<std::size_t>(channels_last ? dims[3] : dims[1]);
  const auto inner = static_cast<std::size_t>(channels_last ? 1 : dims[2] * dims[3]);
  m.params = C;
  m.members.resize(C);
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t c = (k / inner) % C;
    m.members[c].push_back(k);
    m.group_of.push_back(c);
    m.param_of.push_back(c);
  }
  return m;
}

struct Truth {
  Vec xhat;                                // per element
  std::vector<LD> mean, var, r, f, kappa;  // per group; f = 1/(sigma r) (1 for InsideSqrt)
};

Truth truth(const Vec& x, const GroupMap& m, double eps, bool inside) {
  Truth t;
  t.xhat.assign(x.size(), 0.0);
  for (const auto& members : m.members) {
    const LD n = static_cast<LD>(members.size());
    LD mean = 0, var = 0, top = 0;
    if (m.centered) {
      for (std::size_t k : members) mean += x[k];
      mean /= n;
    }
    for (std::size_t k : members) {
      const LD d = x[k] - mean;
      var += d * d;
      top = std::max(top, std::fabs(static_cast<LD>(x[k])));
    }
    var /= n;
    const LD e = eps, sigma = std::sqrt(var);
    const LD r = inside ? 1 / std::sqrt(var + e) : 1 / (sigma + e);
    t.mean.push_back(mean);
    t.var.push_back(var);
    t.r.push_back(r);
    t.f.push_back(inside ? 1.0L : (sigma + e) / sigma);
    t.kappa.push_back(top * r);
    for (std::size_t k : members) t.xhat[k] = static_cast<double>((x[k] - mean) * r);
  }
  return t;
}

// w and b per element (1 and 0 when absent).
Vec per_element(const Vec& p, const GroupMap& m, double absent) {
  Vec out(m.group_of.size(), absent);
  if (!p.empty())
    for (std::size_t k = 0; k < out.size(); ++k) out[k] = p[m.param_of[k]];
  return out;
}

// The forward tolerance of the header comment; kappa_sum[g] = K of the group.
template <class T>
Vec forward_tol(const GroupMap& m, const Truth& t, const std::vector<LD>& kappa_sum, const Vec& w, const Vec& b,
                const Vec& y) {
  const double e = eps_of<T>(), G = static_cast<double>(m.group_size());
  const Vec we = per_element(w, m, 1.0), be = per_element(b, m, 0.0);
  Vec tol(y.size());
  for (std::size_t k = 0; k < y.size(); ++k) {
    const double K = static_cast<double>(kappa_sum[m.group_of[k]]), xh = std::fabs(t.xhat[k]);
    tol[k] = e * (std::fabs(we[k]) * ((2 + xh) * K + (G + 8) * (1 + xh)) + std::fabs(y[k]) + std::fabs(be[k]));
  }
  return tol;
}

// s_j of the header comment: the scale of dx_j's terms and of its coefficients' errors.
Vec dx_scale(const GroupMap& m, const Truth& t, const Vec& g) {
  Vec s(g.size(), 0.0);
  for (std::size_t grp = 0; grp < m.members.size(); ++grp) {
    const auto& members = m.members[grp];
    LD mg = 0, mgx = 0;
    for (std::size_t k : members) {
      mg += std::fabs(g[k]);
      mgx += std::fabs(g[k] * t.xhat[k]);
    }
    mg /= static_cast<LD>(members.size());
    mgx /= static_cast<LD>(members.size());
    for (std::size_t k : members)
      s[k] = static_cast<double>(
          t.r[grp] * (std::fabs(g[k]) + (m.centered ? mg : 0) + t.f[grp] * (1 + std::fabs(t.xhat[k])) * (mgx + mg)));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Running the functors
// ---------------------------------------------------------------------------------------------------

struct Result {
  Vec y, dx;  // row-major
  Vec mean, mean_lo, rstd;
  Vec dw, db;
};

// Forward, and backward when dy is not empty; x in layout LX, y/dy/dx in LY; on `dev` when given.
template <class T, int LX, int LY, std::size_t N, class Fn>
Result run(Fn& fn, const std::array<Index, N>& dims, const Vec& x, const Vec& dy,
           const Eigen::ThreadPoolDevice* dev = nullptr) {
  constexpr int R = static_cast<int>(N);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const auto xt = make_tensor<T, R, LX>(dims, x);
  auto yt = filled_tensor<T, R, LY>(dims, nan);
  const normkit::NormStats<T> s = dev ? fn.forward(*dev, xt, yt) : fn.forward(xt, yt);
  Result r;
  r.y = to_rowmajor(yt);
  r.mean = vec1(s.mean);
  r.mean_lo = vec1(s.mean_lo);
  r.rstd = vec1(s.rstd);
  if (!dy.empty()) {
    const auto dyt = make_tensor<T, R, LY>(dims, dy);
    auto dxt = filled_tensor<T, R, LY>(dims, nan);
    const normkit::NormGrads<T> g = dev ? fn.backward(*dev, xt, dyt, s, dxt) : fn.backward(xt, dyt, s, dxt);
    r.dx = to_rowmajor(dxt);
    r.dw = vec1(g.weight);
    r.db = vec1(g.bias);
  }
  return r;
}

// The same with x, y, dy and dx all in layout L.
template <class T, int L, std::size_t N, class Fn>
Result run_in(Fn& fn, const std::array<Index, N>& dims, const Vec& x, const Vec& dy = {}) {
  return run<T, L, L>(fn, dims, x, dy);
}

// fl_T(a_g * x + b_g) per element, computed in long double and rounded once.
template <class T>
Vec affine_input(const Vec& x, const GroupMap& m, const std::vector<double>& a, const std::vector<double>& b) {
  Vec out(x.size());
  for (std::size_t k = 0; k < x.size(); ++k) {
    const std::size_t g = m.group_of[k];
    out[k] = static_cast<double>(static_cast<T>(static_cast<LD>(a[g]) * x[k] + static_cast<LD>(b[g])));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Shared checks
// ---------------------------------------------------------------------------------------------------

// Property 1 for any functor: run(xs) against run_ref(x), where xs = fl(a x + b) per group and the
// reference run has its eps rescaled. Bitwise when a is a power of two and b = 0: then a x is exact and
// every operation of the library (sums, division by n, sqrt of a^2 v, 1/...) commutes exactly with the
// power-of-two scaling (no overflow or underflow in these ranges).
template <class T>
void check_invariance(const std::string& name_in, const GroupMap& m, const Vec& x, const Vec& xs, double eps,
                      double eps_ref, bool inside, bool exact, const Vec& w, const Vec& b, const Result& got,
                      const Result& want) {
  const std::string name = std::string(type_name<T>()) + " " + name_in;
  if (exact) {
    check_bits(got.y, want.y, name + ": y(a x) vs y(x), a = 2^k");
    return;
  }
  const Truth tx = truth(x, m, eps_ref, inside), ts = truth(xs, m, eps, inside);
  std::vector<LD> K(m.members.size());
  for (std::size_t g = 0; g < K.size(); ++g) K[g] = tx.kappa[g] + ts.kappa[g];
  check_close(got.y, want.y, forward_tol<T>(m, tx, K, w, b, want.y), name + ": y(a x + b) vs y(x)");
}

// Property 3 on one backward run: per group sum(dx) = 0 (when centered) and the <dx, xhat> identity.
template <class T>
void check_backward_identities(const std::string& name_in, const GroupMap& m, const Vec& x, const Vec& dy, const Vec& w,
                               double eps, bool inside, const Vec& dx) {
  const std::string name = std::string(type_name<T>()) + " " + name_in;
  const Truth t = truth(x, m, eps, inside);
  const Vec we = per_element(w, m, 1.0);
  Vec g(dy.size());
  for (std::size_t k = 0; k < g.size(); ++k) g[k] = dy[k] * we[k];
  const Vec s = dx_scale(m, t, g);
  const double e = eps_of<T>(), G = static_cast<double>(m.group_size());
  double worst_sum = 0, worst_orth = 0;
  for (std::size_t grp = 0; grp < m.members.size(); ++grp) {
    LD sum = 0, dot = 0, gx = 0, s2 = 0, v2 = 0;
    for (std::size_t k : m.members[grp]) {
      sum += dx[k];
      dot += static_cast<LD>(dx[k]) * t.xhat[k];
      gx += static_cast<LD>(g[k]) * t.xhat[k];
      s2 += static_cast<LD>(s[k]) * s[k];
      v2 += static_cast<LD>(t.xhat[k]) * t.xhat[k];
    }
    const LD r = t.r[grp];
    const LD exact = static_cast<LD>(eps) * (inside ? r * r * r : r * r) * gx;
    const double tol = e * (G + static_cast<double>(t.kappa[grp]) + 8);
    const double rho_orth = static_cast<double>(std::fabs(dot - exact) / (std::sqrt(s2) * std::sqrt(v2)));
    worst_orth = std::max(worst_orth, rho_orth / tol);
    if (m.centered) {
      const double rho_sum = static_cast<double>(std::fabs(sum) / (std::sqrt(s2) * std::sqrt(G)));
      worst_sum = std::max(worst_sum, rho_sum / tol);
    }
  }
  if (m.centered) check_le(worst_sum, 1.0, name + ": |sum(dx)| / (eps_T (G + kappa + 8) |s| sqrt(G))");
  check_le(worst_orth, 1.0, name + ": |<dx, xhat> - eps r^k sum(g xhat)| / (eps_T (G + kappa + 8) |s| |xhat|)");
}

// Property 4 for two correct computations on the same input (other layout, other thread count).
template <class T>
void check_consistent(const std::string& name_in, const GroupMap& m, const Vec& x, const Vec& dy, double eps,
                      bool inside, const Vec& w, const Vec& b, const Result& got, const Result& want) {
  const std::string name = std::string(type_name<T>()) + " " + name_in;
  const Truth t = truth(x, m, eps, inside);
  const double e = eps_of<T>(), G = static_cast<double>(m.group_size());
  std::vector<LD> K(m.members.size());
  for (std::size_t g = 0; g < K.size(); ++g) K[g] = 2 * t.kappa[g];
  check_close(got.y, want.y, forward_tol<T>(m, t, K, w, b, want.y), name + ": y");
  // statistics: rstd relative, and the mean (hi + lo) in units of the group's sigma
  REQUIRE(got.rstd.size() == want.rstd.size());
  REQUIRE(got.mean.size() == want.mean.size());
  Vec tol_r(want.rstd.size()), mg(got.mean.size()), mw(want.mean.size()), tol_m(want.mean.size());
  for (std::size_t g = 0; g < tol_r.size(); ++g) tol_r[g] = e * (G + 8) * std::fabs(want.rstd[g]);
  for (std::size_t g = 0; g < mg.size(); ++g) {
    mg[g] = got.mean[g] + (got.mean_lo.empty() ? 0.0 : got.mean_lo[g]);
    mw[g] = want.mean[g] + (want.mean_lo.empty() ? 0.0 : want.mean_lo[g]);
    tol_m[g] = e * (std::fabs(mw[g]) + (G + 8) / static_cast<double>(t.r[g]));
  }
  check_close(got.rstd, want.rstd, tol_r, name + ": rstd");
  check_close(mg, mw, tol_m, name + ": mean");
  if (dy.empty()) return;

  const Vec we = per_element(w, m, 1.0);
  Vec g(dy.size());
  for (std::size_t k = 0; k < g.size(); ++k) g[k] = dy[k] * we[k];
  const Vec s = dx_scale(m, t, g);
  Vec tol_dx(s.size());
  for (std::size_t k = 0; k < s.size(); ++k)
    tol_dx[k] = e * (G + 2 * static_cast<double>(t.kappa[m.group_of[k]]) + 8) * s[k];
  check_close(got.dx, want.dx, tol_dx, name + ": dx");

  REQUIRE(got.dw.size() == want.dw.size());
  REQUIRE(got.db.size() == want.db.size());
  std::vector<double> dw_scale(m.params, 0.0), db_scale(m.params, 0.0), terms(m.params, 0.0), kap(m.params, 0.0);
  for (std::size_t k = 0; k < dy.size(); ++k) {
    const std::size_t p = m.param_of[k];
    dw_scale[p] += std::fabs(dy[k]) * (1 + std::fabs(t.xhat[k]));
    db_scale[p] += std::fabs(dy[k]);
    terms[p] += 1;
    kap[p] = std::max(kap[p], static_cast<double>(t.kappa[m.group_of[k]]));
  }
  if (!want.dw.empty()) {
    Vec tol(m.params);
    for (std::size_t p = 0; p < m.params; ++p) tol[p] = e * (terms[p] + G + 2 * kap[p] + 8) * dw_scale[p];
    check_close(got.dw, want.dw, tol, name + ": dweight");
  }
  if (!want.db.empty()) {
    Vec tol(m.params);
    for (std::size_t p = 0; p < m.params; ++p) tol[p] = e * (terms[p] + 2) * db_scale[p];
    check_close(got.db, want.db, tol, name + ": dbias");
  }
}

void check_all_bits(const std::string& name, const Result& got, const Result& want, bool grads = true) {
  check_bits(got.y, want.y, name + ": y");
  check_bits(got.rstd, want.rstd, name + ": rstd");
  check_bits(got.mean, want.mean, name + ": mean");
  check_bits(got.mean_lo, want.mean_lo, name + ": mean_lo");
  check_bits(got.dx, want.dx, name + ": dx");
  if (grads) {
    check_bits(got.dw, want.dw, name + ": dweight");
    check_bits(got.db, want.db, name + ": dbias");
  }
}

// ---------------------------------------------------------------------------------------------------
// Random configurations
// ---------------------------------------------------------------------------------------------------

struct RowCase {
  Index rows = 1, F = 2;
  double eps = 0;
  bool affine = true, bias = true, inside = true;
  std::string str() const {
    return "rows " + std::to_string(rows) + " F " + std::to_string(F) + " eps " + std::to_string(eps) + " affine " +
           std::to_string(affine) + " bias " + std::to_string(bias) + (inside ? " InsideSqrt" : " OutsideSqrt");
  }
};

template <class Opts>
Opts row_options(const RowCase& c) {
  Opts o;
  o.eps = c.eps;
  o.elementwise_affine = c.affine;
  o.bias = c.bias;
  o.eps_placement = c.inside ? EpsPlacement::InsideSqrt : EpsPlacement::OutsideSqrt;
  return o;
}

RowCase random_row_case(Rng& rng) {
  RowCase c;
  c.rows = rng.integer(1, 9);
  c.F = pick_features(rng);
  c.affine = rng.coin();
  c.bias = rng.coin();
  c.inside = rng.coin();
  return c;
}

// A random eps: 0 half of the time, else comparable to the group's variance (InsideSqrt) or standard
// deviation (OutsideSqrt), from 1e-3 to 10 times it, so that eps visibly matters.
double random_eps(Rng& rng, double sigma, bool inside) {
  if (rng.coin()) return 0.0;
  const double k = rng.log_uniform(1e-3, 10.0);
  return inside ? k * sigma * sigma : k * sigma;
}

struct BnCase {
  std::array<Index, 4> dims{};  // (N, C, H, W), or (N, H, W, C) when channels_last
  bool channels_last = false;
  normkit::BatchNormOptions opts;
  bool eval_untracked = false;  // eval() with track_running_stats = false: batch statistics too
  Index C() const { return channels_last ? dims[3] : dims[1]; }
  std::string str() const {
    return std::string(channels_last ? "NHWC (" : "NCHW (") + std::to_string(dims[0]) + "," + std::to_string(dims[1]) +
           "," + std::to_string(dims[2]) + "," + std::to_string(dims[3]) + ") eps " + std::to_string(opts.eps) +
           " affine " + std::to_string(opts.affine) + " track " + std::to_string(opts.track_running_stats) +
           (eval_untracked ? " eval" : " train");
  }
};

BnCase random_bn_case(Rng& rng) {
  BnCase c;
  c.channels_last = rng.coin();
  const Index N = rng.integer(2, 4), C = rng.coin(0.3) ? rng.integer(17, 40) : rng.integer(1, 16);
  const Index H = rng.integer(1, 6), W = rng.integer(1, 7);
  c.dims = c.channels_last ? std::array<Index, 4>{N, H, W, C} : std::array<Index, 4>{N, C, H, W};
  c.opts.affine = rng.coin();
  c.opts.track_running_stats = rng.coin();
  c.opts.channel_axis = c.channels_last ? -1 : 1;
  c.eval_untracked = !c.opts.track_running_stats && rng.coin();
  return c;
}

template <class T>
normkit::BatchNorm<T> make_bn(const BnCase& c, Rng& rng) {
  normkit::BatchNorm<T> bn(c.C(), c.opts);
  randomize_params(bn, rng);
  if (c.eval_untracked) bn.eval();
  return bn;
}

}  // namespace

// =====================================================================================================
// 1. Invariance to a x + b
// =====================================================================================================

namespace {

template <class T, int L>
void layer_norm_invariance_case(Rng& rng, int i) {
  RowCase c = random_row_case(rng);
  const bool pow2 = rng.coin();
  const double a = pow2 ? std::ldexp(1.0, static_cast<int>(rng.integer(-10, 10))) : rng.log_uniform(1e-3, 1e3);
  const double sigma = rng.log_uniform(1e-2, 1e2), mu = sigma * rng.uniform(-10, 10);
  // b = 0 a third of the time; else of the size of a*sigma (beta up to 10), or up to 1000 times it
  // (the tolerance grows with the conditioning kappa of fl(a x + b) accordingly).
  const double beta = rng.coin(1.0 / 3) ? 0.0 : rng.uniform(-10, 10) * (rng.coin(0.25) ? 100.0 : 1.0);
  const double b = a * sigma * beta;
  c.eps = random_eps(rng, a * sigma, c.inside);
  const double eps_ref = c.inside ? c.eps / (a * a) : c.eps / a;
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " a " << a << " b " << b << " mu "
                      << mu << " sigma " << sigma);
  const GroupMap m = rows_map(c.rows, c.F, true);
  const Vec x = random_data<T>(rng, m.group_of.size(), mu, sigma);
  const std::size_t groups = m.members.size();
  const Vec xs = affine_input<T>(x, m, std::vector<double>(groups, a), std::vector<double>(groups, b));

  auto o = row_options<normkit::LayerNormOptions>(c);
  normkit::LayerNorm<T> ln(c.F, o);
  randomize_params(ln, rng);
  o.eps = eps_ref;
  normkit::LayerNorm<T> ln_ref(c.F, o);
  ln_ref.weight() = ln.weight();
  ln_ref.bias() = ln.bias();
  const std::array<Index, 2> dims{c.rows, c.F};
  const Result got = run_in<T, L>(ln, dims, xs), want = run_in<T, L>(ln_ref, dims, x);
  check_invariance<T>("LayerNorm", m, x, xs, c.eps, eps_ref, c.inside, pow2 && b == 0, vec1(ln.weight()),
                      vec1(ln.bias()), got, want);
}

template <class T, int L>
void rms_norm_invariance_case(Rng& rng, int i) {
  RowCase c = random_row_case(rng);
  const bool pow2 = rng.coin();
  const double a = pow2 ? std::ldexp(1.0, static_cast<int>(rng.integer(-10, 10))) : rng.log_uniform(1e-3, 1e3);
  const double sigma = rng.log_uniform(1e-2, 1e2), mu = sigma * rng.uniform(-3, 3);
  const double rms = std::sqrt(mu * mu + sigma * sigma);
  c.eps = random_eps(rng, a * rms, c.inside);
  const double eps_ref = c.inside ? c.eps / (a * a) : c.eps / a;
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " a " << a << " mu " << mu
                      << " sigma " << sigma);
  const GroupMap m = rows_map(c.rows, c.F, false);
  const Vec x = random_data<T>(rng, m.group_of.size(), mu, sigma);
  const std::size_t groups = m.members.size();
  const Vec xs = affine_input<T>(x, m, std::vector<double>(groups, a), std::vector<double>(groups, 0.0));

  auto o = row_options<normkit::RMSNormOptions>(c);
  normkit::RMSNorm<T> rn(c.F, o);
  randomize_params(rn, rng);
  o.eps = eps_ref;
  normkit::RMSNorm<T> rn_ref(c.F, o);
  rn_ref.weight() = rn.weight();
  rn_ref.bias() = rn.bias();
  const std::array<Index, 2> dims{c.rows, c.F};
  const Result got = run_in<T, L>(rn, dims, xs), want = run_in<T, L>(rn_ref, dims, x);
  check_invariance<T>("RMSNorm", m, x, xs, c.eps, eps_ref, c.inside, pow2, vec1(rn.weight()), vec1(rn.bias()), got,
                      want);
}

template <class T, int L>
void batch_norm_invariance_case(Rng& rng, int i) {
  BnCase c = random_bn_case(rng);
  const auto C = static_cast<std::size_t>(c.C());
  const double sigma = rng.log_uniform(1e-2, 1e2), mu = sigma * rng.uniform(-10, 10);
  // eps = 0: a scale a_c and shift b_c per channel. eps > 0: one a for all channels, b_c per channel.
  const bool use_eps = rng.coin();
  const bool pow2 = rng.coin();
  std::vector<double> a(C), b(C);
  const bool zero_b = rng.coin(1.0 / 3);
  for (std::size_t ch = 0; ch < C; ++ch) {
    a[ch] = (use_eps && ch > 0) ? a[0]
            : pow2              ? std::ldexp(1.0, static_cast<int>(rng.integer(-10, 10)))
                                : rng.log_uniform(1e-3, 1e3);
    b[ch] = zero_b ? 0.0 : a[ch] * sigma * rng.uniform(-10, 10);
  }
  c.opts.eps = use_eps ? rng.log_uniform(1e-3, 10.0) * (a[0] * sigma) * (a[0] * sigma) : 0.0;
  const double eps_ref = c.opts.eps / (a[0] * a[0]);
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " a[0] " << a[0] << " b[0] "
                      << b[0] << " mu " << mu << " sigma " << sigma);
  const GroupMap m = channel_map(c.dims, c.channels_last);
  const Vec x = random_data<T>(rng, m.group_of.size(), mu, sigma);
  const Vec xs = affine_input<T>(x, m, a, b);

  normkit::BatchNorm<T> bn = make_bn<T>(c, rng);
  BnCase cr = c;
  cr.opts.eps = eps_ref;
  normkit::BatchNorm<T> bn_ref(cr.C(), cr.opts);
  bn_ref.weight() = bn.weight();
  bn_ref.bias() = bn.bias();
  if (c.eval_untracked) bn_ref.eval();
  const Result got = run_in<T, L>(bn, c.dims, xs), want = run_in<T, L>(bn_ref, c.dims, x);
  check_invariance<T>(std::string("BatchNorm ") + (c.channels_last ? "NHWC" : "NCHW"), m, x, xs, c.opts.eps, eps_ref,
                      true, pow2 && zero_b, vec1(bn.weight()), vec1(bn.bias()), got, want);
}

}  // namespace

TEMPLATE_TEST_CASE("Property: LayerNorm(a x + b) = LayerNorm(x) for a > 0 (eps rescaled)", "[properties]", float,
                   double) {
  Rng rng(sizeof(TestType) == 4 ? 101 : 102);
  for (int i = 0; i < 40; ++i) {
    if (rng.coin()) layer_norm_invariance_case<TestType, kRow>(rng, i);
    else layer_norm_invariance_case<TestType, kCol>(rng, i);
  }
}

TEMPLATE_TEST_CASE("Property: RMSNorm(a x) = RMSNorm(x) for a > 0 (eps rescaled)", "[properties]", float, double) {
  Rng rng(sizeof(TestType) == 4 ? 201 : 202);
  for (int i = 0; i < 40; ++i) {
    if (rng.coin()) rms_norm_invariance_case<TestType, kRow>(rng, i);
    else rms_norm_invariance_case<TestType, kCol>(rng, i);
  }
}

TEMPLATE_TEST_CASE("Property: BatchNorm with batch statistics is unchanged by x[:, c] -> a_c x[:, c] + b_c",
                   "[properties]", float, double) {
  Rng rng(sizeof(TestType) == 4 ? 301 : 302);
  for (int i = 0; i < 40; ++i) {
    if (rng.coin()) batch_norm_invariance_case<TestType, kRow>(rng, i);
    else batch_norm_invariance_case<TestType, kCol>(rng, i);
  }
}

// =====================================================================================================
// 2. Normalized moments before the affine step (eps = 0, no affine)
// =====================================================================================================

namespace {

// Per group: |mean(y)| <= eps_T (kappa + G + 8), |var(y) - 1| <= eps_T (G + 16) (centered), or
// |mean(y^2) - 1| <= eps_T (G + 16) (RMSNorm). Statistics of y in long double.
template <class T>
void check_moments(const std::string& name_in, const GroupMap& m, const Vec& x, const Vec& y, bool inside) {
  const std::string name = std::string(type_name<T>()) + " " + name_in;
  const Truth t = truth(x, m, 0.0, inside);
  const double e = eps_of<T>(), G = static_cast<double>(m.group_size());
  double worst_mean = 0, worst_var = 0;
  for (std::size_t grp = 0; grp < m.members.size(); ++grp) {
    LD s1 = 0, s2 = 0;
    for (std::size_t k : m.members[grp]) s1 += y[k], s2 += static_cast<LD>(y[k]) * y[k];
    const LD mean = s1 / G, ms = s2 / G;
    if (m.centered) {
      const double kappa = static_cast<double>(t.kappa[grp]);
      worst_mean = std::max(worst_mean, static_cast<double>(std::fabs(mean)) / (e * (kappa + G + 8)));
      worst_var = std::max(worst_var, static_cast<double>(std::fabs(ms - mean * mean - 1)) / (e * (G + 16)));
    } else {
      worst_var = std::max(worst_var, static_cast<double>(std::fabs(ms - 1)) / (e * (G + 16)));
    }
  }
  if (m.centered) {
    check_le(worst_mean, 1.0, name + ": |mean(y)| / (eps_T (kappa + G + 8))");
    check_le(worst_var, 1.0, name + ": |var(y) - 1| / (eps_T (G + 16))");
  } else {
    check_le(worst_var, 1.0, name + ": |mean(y^2) - 1| / (eps_T (G + 16))");
  }
}

template <class T, int L>
void moments_case(Rng& rng, int i) {
  RowCase c = random_row_case(rng);
  c.affine = false;
  c.eps = 0;
  // |mu| up to 100 sigma: kappa up to ~100, where a careless mean would show in mean(y)
  const double sigma = rng.log_uniform(1e-3, 1e3), mu = sigma * rng.uniform(-100, 100);
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " mu " << mu << " sigma "
                      << sigma);
  const std::array<Index, 2> dims{c.rows, c.F};
  const Vec x = random_data<T>(rng, static_cast<std::size_t>(c.rows * c.F), mu, sigma);
  normkit::LayerNorm<T> ln(c.F, row_options<normkit::LayerNormOptions>(c));
  check_moments<T>("LayerNorm", rows_map(c.rows, c.F, true), x, run_in<T, L>(ln, dims, x).y, c.inside);
  normkit::RMSNorm<T> rn(c.F, row_options<normkit::RMSNormOptions>(c));
  check_moments<T>("RMSNorm", rows_map(c.rows, c.F, false), x, run_in<T, L>(rn, dims, x).y, c.inside);

  BnCase b = random_bn_case(rng);
  b.opts.affine = false;
  b.opts.eps = 0;
  INFO(b.str());
  const GroupMap bm = channel_map(b.dims, b.channels_last);
  const Vec bx = random_data<T>(rng, bm.group_of.size(), mu, sigma);
  normkit::BatchNorm<T> bn = make_bn<T>(b, rng);
  check_moments<T>(std::string("BatchNorm ") + (b.channels_last ? "NHWC" : "NCHW"), bm, bx,
                   run_in<T, L>(bn, b.dims, bx).y, true);
}

}  // namespace

TEMPLATE_TEST_CASE("Property: before the affine step, rows/channels have mean 0 and variance 1 (RMS: mean square 1)",
                   "[properties]", float, double) {
  Rng rng(sizeof(TestType) == 4 ? 401 : 402);
  for (int i = 0; i < 40; ++i) {
    if (rng.coin()) moments_case<TestType, kRow>(rng, i);
    else moments_case<TestType, kCol>(rng, i);
  }
}

// =====================================================================================================
// 3. Backward identities
// =====================================================================================================

namespace {

template <class T, int L>
void backward_case(Rng& rng, int i) {
  RowCase c = random_row_case(rng);
  const double sigma = rng.log_uniform(1e-2, 1e2), mu = sigma * rng.uniform(-10, 10);
  c.eps = random_eps(rng, sigma, c.inside);
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " mu " << mu << " sigma "
                      << sigma);
  const std::array<Index, 2> dims{c.rows, c.F};
  const auto n = static_cast<std::size_t>(c.rows * c.F);
  const Vec x = random_data<T>(rng, n, mu, sigma), dy = random_dy<T>(rng, n);

  normkit::LayerNorm<T> ln(c.F, row_options<normkit::LayerNormOptions>(c));
  randomize_params(ln, rng);
  check_backward_identities<T>("LayerNorm", rows_map(c.rows, c.F, true), x, dy, vec1(ln.weight()), c.eps, c.inside,
                               run_in<T, L>(ln, dims, x, dy).dx);

  // RMSNorm: eps relative to the mean square
  const double rms = std::sqrt(mu * mu + sigma * sigma);
  RowCase rc = c;
  rc.eps = random_eps(rng, rms, c.inside);
  INFO("RMSNorm eps " << rc.eps);
  normkit::RMSNorm<T> rn(c.F, row_options<normkit::RMSNormOptions>(rc));
  randomize_params(rn, rng);
  check_backward_identities<T>("RMSNorm", rows_map(c.rows, c.F, false), x, dy, vec1(rn.weight()), rc.eps, rc.inside,
                               run_in<T, L>(rn, dims, x, dy).dx);

  BnCase b = random_bn_case(rng);
  b.opts.eps = random_eps(rng, sigma, true);
  INFO(b.str());
  const GroupMap bm = channel_map(b.dims, b.channels_last);
  const Vec bx = random_data<T>(rng, bm.group_of.size(), mu, sigma), bdy = random_dy<T>(rng, bm.group_of.size());
  normkit::BatchNorm<T> bn = make_bn<T>(b, rng);
  check_backward_identities<T>(std::string("BatchNorm ") + (b.channels_last ? "NHWC" : "NCHW"), bm, bx, bdy,
                               vec1(bn.weight()), b.opts.eps, true, run_in<T, L>(bn, b.dims, bx, bdy).dx);
}

}  // namespace

TEMPLATE_TEST_CASE("Property: backward, sum(dx) = 0 and <dx, xhat> = eps r^k sum(g xhat) (0 when eps = 0)",
                   "[properties]", float, double) {
  Rng rng(sizeof(TestType) == 4 ? 501 : 502);
  for (int i = 0; i < 40; ++i) {
    if (rng.coin()) backward_case<TestType, kRow>(rng, i);
    else backward_case<TestType, kCol>(rng, i);
  }
}

// =====================================================================================================
// 4a. RowMajor vs ColMajor
// =====================================================================================================
//
// The two layouts run different kernels (a row is a contiguous run in RowMajor and a column of the
// [features][rows] memory in ColMajor; a channel is N runs of H*W in NCHW RowMajor and runs of N in
// ColMajor), whose sums add the same terms in different orders: results agree to rounding, not bits,
// and are compared with the "two correct computations" tolerances of the header comment. The layout of
// y, dy and dx alone does not matter to the bit: the library computes in x's layout and converts.

namespace {

template <class T>
void layout_case(Rng& rng, int i) {
  RowCase c = random_row_case(rng);
  const double sigma = rng.log_uniform(1e-2, 1e2), mu = sigma * rng.uniform(-10, 10);
  c.eps = random_eps(rng, sigma, c.inside);
  INFO(type_name<T>() << " case " << i << ": " << c.str() << " mu " << mu << " sigma " << sigma);
  const std::array<Index, 2> dims{c.rows, c.F};
  const auto n = static_cast<std::size_t>(c.rows * c.F);
  const Vec x = random_data<T>(rng, n, mu, sigma), dy = random_dy<T>(rng, n);

  normkit::LayerNorm<T> ln(c.F, row_options<normkit::LayerNormOptions>(c));
  randomize_params(ln, rng);
  const Result lr = run_in<T, kRow>(ln, dims, x, dy), lc = run_in<T, kCol>(ln, dims, x, dy);
  check_consistent<T>("LayerNorm ColMajor vs RowMajor", rows_map(c.rows, c.F, true), x, dy, c.eps, c.inside,
                      vec1(ln.weight()), vec1(ln.bias()), lc, lr);
  check_all_bits("LayerNorm x RowMajor, y/dy/dx ColMajor vs all RowMajor", run<T, kRow, kCol>(ln, dims, x, dy), lr);
  check_all_bits("LayerNorm x ColMajor, y/dy/dx RowMajor vs all ColMajor", run<T, kCol, kRow>(ln, dims, x, dy), lc);

  const double rms = std::sqrt(mu * mu + sigma * sigma);
  RowCase rc = c;
  rc.eps = random_eps(rng, rms, c.inside);
  normkit::RMSNorm<T> rn(c.F, row_options<normkit::RMSNormOptions>(rc));
  randomize_params(rn, rng);
  const Result rr = run_in<T, kRow>(rn, dims, x, dy), rcm = run_in<T, kCol>(rn, dims, x, dy);
  check_consistent<T>("RMSNorm ColMajor vs RowMajor", rows_map(c.rows, c.F, false), x, dy, rc.eps, rc.inside,
                      vec1(rn.weight()), vec1(rn.bias()), rcm, rr);
  check_all_bits("RMSNorm x RowMajor, y/dy/dx ColMajor vs all RowMajor", run<T, kRow, kCol>(rn, dims, x, dy), rr);

  BnCase b = random_bn_case(rng);
  b.opts.eps = random_eps(rng, sigma, true);
  INFO(b.str());
  const std::string name = std::string("BatchNorm ") + (b.channels_last ? "NHWC" : "NCHW");
  const GroupMap bm = channel_map(b.dims, b.channels_last);
  const Vec bx = random_data<T>(rng, bm.group_of.size(), mu, sigma), bdy = random_dy<T>(rng, bm.group_of.size());
  normkit::BatchNorm<T> bn = make_bn<T>(b, rng);
  const Result br = run_in<T, kRow>(bn, b.dims, bx, bdy), bc = run_in<T, kCol>(bn, b.dims, bx, bdy);
  check_consistent<T>(name + " ColMajor vs RowMajor", bm, bx, bdy, b.opts.eps, true, vec1(bn.weight()), vec1(bn.bias()),
                      bc, br);
  check_all_bits(name + " x RowMajor, y/dy/dx ColMajor vs all RowMajor", run<T, kRow, kCol>(bn, b.dims, bx, bdy), br);
}

}  // namespace

TEMPLATE_TEST_CASE("Property: RowMajor and ColMajor give the same results (to rounding)", "[properties]", float,
                   double) {
  Rng rng(sizeof(TestType) == 4 ? 601 : 602);
  for (int i = 0; i < 25; ++i) layout_case<TestType>(rng, i);
}

// =====================================================================================================
// 4b. Thread count
// =====================================================================================================
//
// Results are invariant to the thread count (the contract's "Invariance"): the chunks a call is cut
// into follow from the shape alone (core/parallel.hpp), and what crosses chunks — LayerNorm/RMSNorm
// dweight/dbias, the statistics and sums of channels-last BatchNorm cut into row chunks — is merged in
// chunk order. So every output, statistic and gradient is bit-identical for 1 to 4 threads and the
// plain call, in both layouts (and with x and y in different layouts). This is the one place thread
// counts are tested; that the plain call matches the float64 reference is trailing_norm_test's and
// batch_norm_test's job (their sweeps include these shapes' feature sizes).

namespace {

struct Pool {
  explicit Pool(int n) : pool(n), device(&pool, n) {}
  Eigen::ThreadPool pool;
  Eigen::ThreadPoolDevice device;
};

// x in layout LX, y/dy/dx in LY.
template <class T, int LX, int LY, std::size_t N, class Fn>
void thread_check(const std::string& name, Fn& fn, const std::array<Index, N>& dims, const Vec& x, const Vec& dy) {
  const Result serial = run<T, LX, LY>(fn, dims, x, dy);
  for (int threads = 1; threads <= 4; ++threads) {
    Pool p(threads);
    const Result r = run<T, LX, LY>(fn, dims, x, dy, &p.device);
    const std::string what = std::string(type_name<T>()) + " " + name + " x " + layout_name(LX) + " y " +
                             layout_name(LY) + " " + std::to_string(threads) + " threads vs serial";
    INFO(what);
    check_all_bits(what, r, serial);
  }
}

// All four layout combinations of x and y/dy/dx, on fresh random data.
template <class T, std::size_t N, class Fn>
void thread_check_layouts(const std::string& name, Fn& fn, const std::array<Index, N>& dims, Rng& rng) {
  const auto n = static_cast<std::size_t>(product(dims_vec(dims, static_cast<int>(N))));
  const Vec x = random_data<T>(rng, n, 0.5, 1.0), dy = random_dy<T>(rng, n);
  thread_check<T, kRow, kRow>(name, fn, dims, x, dy);
  thread_check<T, kCol, kCol>(name, fn, dims, x, dy);
  thread_check<T, kRow, kCol>(name, fn, dims, x, dy);
  thread_check<T, kCol, kRow>(name, fn, dims, x, dy);
}

template <class T>
void thread_cases() {
  Rng rng(sizeof(T) == 4 ? 701 : 702);
  {
    normkit::LayerNormOptions o;
    o.eps = 1e-5;
    const Index rows = 200, F = 1000;  // 3 chunks of >= 2^16 values
    normkit::LayerNorm<T> ln(F, o);
    randomize_params(ln, rng);
    const GroupMap m = rows_map(rows, F, true);
    const Vec x = random_data<T>(rng, m.group_of.size(), 0.5, 2.0), dy = random_dy<T>(rng, m.group_of.size());
    const std::array<Index, 2> dims{rows, F};
    thread_check<T, kRow, kRow>("LayerNorm (200, 1000)", ln, dims, x, dy);
    thread_check<T, kCol, kCol>("LayerNorm (200, 1000)", ln, dims, x, dy);
  }
  {
    normkit::RMSNormOptions o;
    o.bias = true;
    o.eps_placement = EpsPlacement::OutsideSqrt;
    const Index rows = 197, F = 1031;
    normkit::RMSNorm<T> rn(F, o);
    randomize_params(rn, rng);
    const GroupMap m = rows_map(rows, F, false);
    const Vec x = random_data<T>(rng, m.group_of.size(), 0.5, 2.0), dy = random_dy<T>(rng, m.group_of.size());
    const std::array<Index, 2> dims{rows, F};
    thread_check<T, kRow, kRow>("RMSNorm (197, 1031)", rn, dims, x, dy);
    thread_check<T, kCol, kCol>("RMSNorm (197, 1031)", rn, dims, x, dy);
  }
  for (const auto& [dims, last] : {std::pair<std::array<Index, 4>, bool>{{16, 12, 33, 33}, false},
                                   std::pair<std::array<Index, 4>, bool>{{16, 33, 33, 12}, true},
                                   std::pair<std::array<Index, 4>, bool>{{4, 8, 8, 801}, true}}) {
    BnCase c;
    c.dims = dims;
    c.channels_last = last;
    c.opts.channel_axis = last ? -1 : 1;
    normkit::BatchNorm<T> bn = make_bn<T>(c, rng);
    const GroupMap m = channel_map(dims, last);
    const Vec x = random_data<T>(rng, m.group_of.size(), -1.0, 3.0), dy = random_dy<T>(rng, m.group_of.size());
    const std::string name = "BatchNorm " + c.str();
    thread_check<T, kRow, kRow>(name, bn, dims, x, dy);
    thread_check<T, kCol, kCol>(name, bn, dims, x, dy);
  }
  // The edges of the chunking, in every layout combination: fewer rows than threads with long rows, one
  // row, many short rows, two normalized axes of rank 4 (OutsideSqrt, no bias), no affine, a wide
  // transformer-like shape. (Until these joined 4b, a separate threads_test compared them to 8 ulps.)
  {
    normkit::LayerNorm<T> ln(4099);
    randomize_params(ln, rng);
    thread_check_layouts<T>("LayerNorm (3, 4099)", ln, std::array<Index, 2>{3, 4099}, rng);
    thread_check_layouts<T>("LayerNorm (1, 4099)", ln, std::array<Index, 2>{1, 4099}, rng);
  }
  {
    normkit::LayerNorm<T> ln(7);
    randomize_params(ln, rng);
    thread_check_layouts<T>("LayerNorm (4001, 7)", ln, std::array<Index, 2>{4001, 7}, rng);
  }
  {
    normkit::LayerNormOptions o;
    o.eps_placement = EpsPlacement::OutsideSqrt;
    o.bias = false;
    normkit::LayerNorm<T> ln({3, 64}, o);
    randomize_params(ln, rng);
    thread_check_layouts<T>("LayerNorm (4, 16, 3, 64) over (3, 64)", ln, std::array<Index, 4>{4, 16, 3, 64}, rng);
  }
  {
    normkit::LayerNormOptions o;
    o.elementwise_affine = false;
    normkit::LayerNorm<T> ln(256, o);
    thread_check_layouts<T>("LayerNorm (300, 256) no affine", ln, std::array<Index, 2>{300, 256}, rng);
    normkit::RMSNormOptions ro;
    ro.eps_placement = EpsPlacement::OutsideSqrt;
    normkit::RMSNorm<T> rn(256, ro);
    randomize_params(rn, rng);
    thread_check_layouts<T>("RMSNorm (10, 30, 256)", rn, std::array<Index, 3>{10, 30, 256}, rng);
  }
  {
    normkit::LayerNorm<T> ln(768);
    randomize_params(ln, rng);
    thread_check_layouts<T>("LayerNorm (512, 768)", ln, std::array<Index, 2>{512, 768}, rng);
    normkit::RMSNormOptions o;
    o.bias = true;
    normkit::RMSNorm<T> rn(768, o);
    randomize_params(rn, rng);
    thread_check_layouts<T>("RMSNorm (512, 768)", rn, std::array<Index, 2>{512, 768}, rng);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Property: every bit is the same for 1 to 4 threads and the plain call", "[properties]", float,
                   double) {
  thread_cases<TestType>();
}

// What a pool does at the edges: no rows, a NaN row among others, shapes it must refuse.
TEST_CASE("Thread pool: empty batch, NaN isolation and bad input", "[properties][threads]") {
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
      for (Index j = 0; j < 16; ++j)
        ok = ok && (r == 100 ? std::isnan(dirty(r, j)) : same_bits(clean(r, j), dirty(r, j)));
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

// =====================================================================================================
// 4c. Alignment of the data pointers
// =====================================================================================================
//
// Every load and store in the kernels is unaligned, and the split between the vector body and the
// scalar tail depends on the run length only, not on the address. So below 8 MiB of output, results
// are bit-identical for every offset, and are asserted so. Buffers come from Eigen's aligned_allocator
// (aligned to EIGEN_MAX_ALIGN_BYTES, 64 with AVX-512), so offset 0 is packet-aligned and offsets 1..15
// cover every misalignment of a 64-byte packet for float (and two periods of it for double). The
// words of the buffers outside the mapped range must stay untouched.
//
// Outputs of 8 MiB and more are written with non-temporal stores, and the values of a run before its
// first cache-line boundary go through the scalar code (core::stream_span), so which values take
// the scalar path depends on the address. The kernels write every fused multiply-add explicitly
// (simd::madd, fused in the scalar edges exactly when in the vector body), so that path gives the same
// bits too: asserted below. (Before that, GCC fused the scalar edges' v * w + b under -O2 but not under
// -fsanitize=undefined or -ffp-contract=off, and results moved by a rounding with the offset.)

namespace {

template <class T>
using AlignedVec = std::vector<T, Eigen::aligned_allocator<T>>;

constexpr std::size_t kGuard = 16;

// forward + backward through RowMajor TensorMaps placed at the given element offsets (x, y, dy, dx).
template <class T, std::size_t N, class Fn>
Result run_at(Fn& fn, const std::array<Index, N>& dims, const Vec& x, const Vec& dy,
              const std::array<std::size_t, 4>& off, bool* guards_ok) {
  constexpr int R = static_cast<int>(N);
  using Map = Eigen::TensorMap<Eigen::Tensor<T, R, kRow>>;
  using CMap = Eigen::TensorMap<const Eigen::Tensor<T, R, kRow>>;
  const std::size_t n = x.size();
  const T sentinel = T(-12345.5);
  std::array<AlignedVec<T>, 4> buf;
  for (auto& b : buf) b.assign(n + kGuard, sentinel);
  for (std::size_t k = 0; k < n; ++k) {
    buf[0][off[0] + k] = static_cast<T>(x[k]);
    buf[2][off[2] + k] = static_cast<T>(dy[k]);
  }
  const CMap xm(buf[0].data() + off[0], dims), dym(buf[2].data() + off[2], dims);
  const normkit::NormStats<T> s = fn.forward(xm, Map(buf[1].data() + off[1], dims));
  const normkit::NormGrads<T> g = fn.backward(xm, dym, s, Map(buf[3].data() + off[3], dims));
  Result r;
  r.y.assign(buf[1].data() + off[1], buf[1].data() + off[1] + n);
  r.dx.assign(buf[3].data() + off[3], buf[3].data() + off[3] + n);
  r.mean = vec1(s.mean), r.mean_lo = vec1(s.mean_lo), r.rstd = vec1(s.rstd), r.dw = vec1(g.weight), r.db = vec1(g.bias);
  bool ok = true;
  for (const std::size_t which : {1u, 3u})
    for (std::size_t k = 0; k < n + kGuard; ++k)
      if (k < off[which] || k >= off[which] + n) ok = ok && std::memcmp(&buf[which][k], &sentinel, sizeof(T)) == 0;
  *guards_ok = ok;
  return r;
}

template <class T, std::size_t N, class Fn>
void alignment_check(const std::string& name, Fn& fn, const std::array<Index, N>& dims, Rng& rng,
                     const std::vector<std::size_t>& offsets) {
  std::size_t n = 1;
  for (Index d : dims) n *= static_cast<std::size_t>(d);
  const Vec x = random_data<T>(rng, n, 0.25, 1.5), dy = random_dy<T>(rng, n);
  bool guards = true;
  const Result base = run_at<T>(fn, dims, x, dy, {0, 0, 0, 0}, &guards);
  CHECK(guards);
  for (std::size_t k : offsets) {
    // all four at offset k, then four different offsets
    for (const std::array<std::size_t, 4>& off :
         {std::array<std::size_t, 4>{k, k, k, k},
          std::array<std::size_t, 4>{k, (3 * k + 1) % 16, (5 * k + 7) % 16, (11 * k + 3) % 16}}) {
      const std::string what = std::string(type_name<T>()) + " " + name + " offsets x " + std::to_string(off[0]) +
                               " y " + std::to_string(off[1]) + " dy " + std::to_string(off[2]) + " dx " +
                               std::to_string(off[3]);
      INFO(what);
      const Result r = run_at<T>(fn, dims, x, dy, off, &guards);
      CHECK(guards);
      const std::string label = std::string(type_name<T>()) + " " + name + " at an offset vs offset 0";
      check_all_bits(label, r, base);
    }
  }
}

template <class T>
void alignment_cases() {
  Rng rng(sizeof(T) == 4 ? 801 : 802);
  std::vector<std::size_t> all;
  for (std::size_t k = 1; k <= 15; ++k) all.push_back(k);
  for (const Index F : {Index(37), Index(100), Index(1000)}) {
    const Index rows = F == 1000 ? 3 : 5;
    normkit::LayerNorm<T> ln(F);
    randomize_params(ln, rng);
    alignment_check<T>("LayerNorm (" + std::to_string(rows) + ", " + std::to_string(F) + ")", ln,
                       std::array<Index, 2>{rows, F}, rng, all);
    normkit::RMSNormOptions o;
    o.bias = true;
    normkit::RMSNorm<T> rn(F, o);
    randomize_params(rn, rng);
    alignment_check<T>("RMSNorm (" + std::to_string(rows) + ", " + std::to_string(F) + ")", rn,
                       std::array<Index, 2>{rows, F}, rng, all);
  }
  // NCHW: runs of H*W = 63 and 100 values; NHWC: 37 and 100 channel columns
  for (const auto& [dims, last] : {std::pair<std::array<Index, 4>, bool>{{3, 5, 7, 9}, false},
                                   std::pair<std::array<Index, 4>, bool>{{2, 3, 10, 10}, false},
                                   std::pair<std::array<Index, 4>, bool>{{3, 7, 9, 37}, true},
                                   std::pair<std::array<Index, 4>, bool>{{2, 4, 4, 100}, true}}) {
    BnCase c;
    c.dims = dims;
    c.channels_last = last;
    c.opts.channel_axis = last ? -1 : 1;
    normkit::BatchNorm<T> bn = make_bn<T>(c, rng);
    alignment_check<T>("BatchNorm " + c.str(), bn, dims, rng, all);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Property: results do not depend on the alignment of x, y, dy, dx", "[properties]", float, double) {
  alignment_cases<TestType>();
}

// Outputs of 8 MiB and more take the non-temporal store path, whose scalar head depends on the address
// (see above). Rows of 1031 and 129 (odd) values start at every misalignment within one call, so a few
// offsets suffice.
TEST_CASE("Property: alignment does not change results on the streaming-store path (8 MiB outputs)", "[properties]") {
  Rng rng(901);
  const std::vector<std::size_t> offsets{1, 8, 15};
  normkit::LayerNorm<float> ln(1031);
  randomize_params(ln, rng);
  alignment_check<float>("LayerNorm (2048, 1031)", ln, std::array<Index, 2>{2048, 1031}, rng, offsets);
  BnCase c;
  c.dims = {128, 16, 8, 129};
  c.channels_last = true;
  c.opts.channel_axis = -1;
  normkit::BatchNorm<float> bn = make_bn<float>(c, rng);
  alignment_check<float>("BatchNorm " + c.str(), bn, c.dims, rng, offsets);
}
