// tests/properties_test.cpp — properties that hold for every input, checked on many random inputs
// (seeded std::mt19937, so every run sees the same cases; INFO names the case on failure).
//
//  1. Invariance: LayerNorm(a x + b) = LayerNorm(x) (a > 0), RMSNorm(a x) = RMSNorm(x), BatchNorm in
//     training (batch statistics) is unchanged by x[:, c] -> a_c x[:, c] + b_c, NCHW and channels-last.
//  2. Before the affine step: LayerNorm rows have mean 0 and variance 1, RMSNorm rows mean square 1,
//     BatchNorm channels mean 0 and variance 1.
//  3. Backward: sum(dx) = 0 over a LayerNorm row / BatchNorm channel, and <dx, xhat> has a closed form
//     that is 0 when eps = 0 (derived below).
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
//  * y of two correct computations (x against fl(a x + b), with the eps of the reference rescaled):
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
//  * Bitwise equality is asserted where the arithmetic is exact (scaling by a power of two). Setting the
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
  const Mismatch m = compare_tol(got, want, [&](std::size_t i) { return tol[i]; }, what);
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
  INFO(what << ": sizes " << got.size() << " vs " << want.size() << ", " << bad << " entries differ; first at "
            << first << ": " << (bad ? got[first] : 0.0) << " vs " << (bad ? want[first] : 0.0));
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
  Vec xhat;                                  // per element
  std::vector<LD> mean, var, r, f, kappa;    // per group; f = 1/(sigma r) (1 for InsideSqrt)
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
      s[k] = static_cast<double>(t.r[grp] * (std::fabs(g[k]) + (m.centered ? mg : 0) +
                                             t.f[grp] * (1 + std::fabs(t.xhat[k])) * (mgx + mg)));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Running the functors
// ---------------------------------------------------------------------------------------------------

struct Result {
  Vec y, dx;              // row-major
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
void check_backward_identities(const std::string& name_in, const GroupMap& m, const Vec& x, const Vec& dy,
                               const Vec& w, double eps, bool inside, const Vec& dx) {
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

// ---------------------------------------------------------------------------------------------------
// Random configurations
// ---------------------------------------------------------------------------------------------------

struct RowCase {
  Index rows = 1, F = 2;
  double eps = 0;
  bool affine = true, bias = true, inside = true;
  std::string str() const {
    return "rows " + std::to_string(rows) + " F " + std::to_string(F) + " eps " + std::to_string(eps) +
           " affine " + std::to_string(affine) + " bias " + std::to_string(bias) +
           (inside ? " InsideSqrt" : " OutsideSqrt");
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
  INFO(type_name<T>() << " " << layout_name(L) << " case " << i << ": " << c.str() << " a " << a << " b " << b
                      << " mu " << mu << " sigma " << sigma);
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
