// tests/support/reference.hpp — the one library of independent float64 references and small helpers
// for the normkit tests (namespace nkref); each helper is defined once, here.
//
// Nothing here includes or calls normkit: the references below are written straight from the formulas
// in CONTRACT.md (and PyTorch's BatchNorm semantics), so a test that compares the library against them
// compares two independent codes.
//
//  * random data       : normal_vec / uniform_vec (seeded std::mt19937, reproducible), round_to<T>,
//                        random_input<T>(n, seed), channel_input(dims, axis, seed) (per-channel offsets)
//  * layouts           : to_rowmajor(tensor) -> std::vector<double> in row-major (PyTorch) order, whatever
//                        the tensor's layout (Tensor or TensorMap); from_rowmajor(vec, tensor) writes back;
//                        make_tensor<T, R, Layout>(dims, vec); filled_tensor; vec1 / set_vec1 / tensor1 for
//                        rank-1 tensors; dims_vec, product, rows_features, ChannelLayout
//  * comparisons       : compare(got, want, atol, rtol), compare_scaled(got, want, scale, rel) return a
//                        Mismatch whose str() names the worst entry; max_abs_diff, max_rel_diff, max_abs,
//                        bits_equal, same_bits
//  * references        : row_norm_forward / row_norm_backward — LayerNorm and RMSNorm over a
//                        [rows x features] row-major std::vector<double> (long double accumulators);
//                        RefBatchNorm — torch.nn.BatchNorm{1,2,3}d (forward, backward, running stats)
//  * finite differences: fd_gradient(f, p, h) — central differences of a scalar function
//
// The tests include <normkit/normkit.hpp> first; this header also defines EIGEN_USE_THREADS (if it is
// not yet defined) before touching the Tensor module, so the include order cannot silently drop the
// ThreadPoolDevice support.
#pragma once

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>

namespace nkref {

using Index = Eigen::Index;
using Vec = std::vector<double>;

// ---------------------------------------------------------------------------------------------------
// Random data
// ---------------------------------------------------------------------------------------------------

// Seeds are taken modulo 2^32 (std::mt19937's state is seeded from 32 bits).
inline std::mt19937 seeded(std::uint64_t seed) {
  return std::mt19937(static_cast<std::mt19937::result_type>(seed & 0xFFFFFFFFu));
}

inline Vec normal_vec(std::size_t n, std::uint64_t seed, double mean = 0.0, double stddev = 1.0) {
  auto gen = seeded(seed);
  std::normal_distribution<double> dist(mean, stddev);
  Vec v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

inline Vec uniform_vec(std::size_t n, std::uint64_t seed, double lo, double hi) {
  auto gen = seeded(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Vec v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

// Rounds every value through T, so that the float64 reference sees exactly the inputs the T code sees.
template <class T>
Vec round_to(Vec v) {
  for (auto& e : v) e = static_cast<double>(static_cast<T>(e));
  return v;
}

// x = offset + stddev * N(0,1), rounded to T.
template <class T>
Vec random_input(std::size_t n, std::uint64_t seed, double offset = 0.0, double stddev = 1.0) {
  return round_to<T>(normal_vec(n, seed, offset, stddev));
}

// ---------------------------------------------------------------------------------------------------
// Dimensions and layouts
// ---------------------------------------------------------------------------------------------------

template <class Dims>
std::vector<Index> dims_vec(const Dims& d, int rank) {
  std::vector<Index> out(static_cast<std::size_t>(rank));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<Index>(d[i]);
  return out;
}

inline Index product(const std::vector<Index>& d, std::size_t begin, std::size_t end) {
  Index p = 1;
  for (std::size_t i = begin; i < end; ++i) p *= d[i];
  return p;
}

inline Index product(const std::vector<Index>& d) { return product(d, 0, d.size()); }

// rows x features of a tensor whose last `norm_rank` axes are normalized.
struct RowsFeatures {
  Index rows;
  Index features;
};
inline RowsFeatures rows_features(const std::vector<Index>& dims, std::size_t norm_rank) {
  const std::size_t lead = dims.size() - norm_rank;
  return {product(dims, 0, lead), product(dims, lead, dims.size())};
}

// Storage offset, in a tensor of the given layout, of the element whose row-major linear index is k.
inline Index storage_offset(Index k, const std::vector<Index>& dims, bool row_major) {
  if (row_major) return k;
  const std::size_t r = dims.size();
  std::vector<Index> idx(r);
  for (std::size_t a = r; a-- > 0;) {  // unravel k, last axis fastest
    idx[a] = k % dims[a];
    k /= dims[a];
  }
  Index off = 0, stride = 1;  // ColMajor: first axis fastest
  for (std::size_t a = 0; a < r; ++a) {
    off += idx[a] * stride;
    stride *= dims[a];
  }
  return off;
}

// Reads any Tensor / TensorMap (either layout) into a row-major std::vector<double>.
template <class TT>
Vec to_rowmajor(const TT& t) {
  constexpr int R = TT::NumIndices;
  const bool rm = static_cast<int>(TT::Layout) == static_cast<int>(Eigen::RowMajor);
  const auto dims = dims_vec(t.dimensions(), R);
  const Index n = product(dims);
  Vec out(static_cast<std::size_t>(n));
  for (Index k = 0; k < n; ++k)
    out[static_cast<std::size_t>(k)] = static_cast<double>(t.data()[storage_offset(k, dims, rm)]);
  return out;
}

// Writes a row-major vector into an existing Tensor / TensorMap of any layout (sizes must match).
template <class TT>
void from_rowmajor(const Vec& v, TT&& t) {
  using TD = std::decay_t<TT>;
  using Scalar = typename TD::Scalar;
  constexpr int R = TD::NumIndices;
  const bool rm = static_cast<int>(TD::Layout) == static_cast<int>(Eigen::RowMajor);
  const auto dims = dims_vec(t.dimensions(), R);
  const Index n = product(dims);
  if (static_cast<Index>(v.size()) != n) throw std::logic_error("nkref::from_rowmajor: size mismatch");
  for (Index k = 0; k < n; ++k)
    t.data()[storage_offset(k, dims, rm)] = static_cast<Scalar>(v[static_cast<std::size_t>(k)]);
}

template <class T, int R, int Layout = Eigen::RowMajor>
Eigen::Tensor<T, R, Layout> make_tensor(const std::array<Index, static_cast<std::size_t>(R)>& dims,
                                        const Vec& rowmajor) {
  Eigen::Tensor<T, R, Layout> t(dims);
  from_rowmajor(rowmajor, t);
  return t;
}

template <class T, int R, int Layout = Eigen::RowMajor>
Eigen::Tensor<T, R, Layout> filled_tensor(const std::array<Index, static_cast<std::size_t>(R)>& dims, T value) {
  Eigen::Tensor<T, R, Layout> t(dims);
  t.setConstant(value);
  return t;
}

template <class T>
Vec vec1(const Eigen::Tensor<T, 1>& t) {
  Vec v(static_cast<std::size_t>(t.size()));
  for (Index i = 0; i < t.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(t(i));
  return v;
}

template <class T>
void set_vec1(Eigen::Tensor<T, 1>& t, const Vec& v) {
  for (Index i = 0; i < t.size(); ++i) t(i) = static_cast<T>(v[static_cast<std::size_t>(i)]);
}

template <class T>
Eigen::Tensor<T, 1> tensor1(const Vec& v) {
  Eigen::Tensor<T, 1> t(static_cast<Index>(v.size()));
  set_vec1(t, v);
  return t;
}

// Channel axis in [0, R) from the option value (negatives counted from the end).
inline int normalize_axis(Index channel_axis, int rank) {
  const Index a = channel_axis < 0 ? channel_axis + rank : channel_axis;
  if (a < 0 || a >= rank) throw std::invalid_argument("nkref: channel_axis out of range");
  return static_cast<int>(a);
}

// Where the channel of a row-major flat index is, for a tensor whose channel axis is `axis`.
struct ChannelLayout {
  Index channels = 0;
  Index inner = 1;        // product of the dims after the channel axis
  Index per_channel = 0;  // number of elements per channel (N * spatial)
  ChannelLayout(const std::vector<Index>& dims, int axis) {
    channels = dims[static_cast<std::size_t>(axis)];
    inner = product(dims, static_cast<std::size_t>(axis) + 1, dims.size());
    per_channel = channels > 0 ? product(dims) / channels : 0;
  }
  Index channel_of(Index k) const { return (k / inner) % channels; }
};

// Row-major values with a per-channel offset in [-3, 3) and spread in [0.5, 2), so that a mix-up of
// channels shows.
inline Vec channel_input(const std::vector<Index>& dims, int axis, std::uint64_t seed) {
  const ChannelLayout lay(dims, axis);
  const auto C = static_cast<std::size_t>(lay.channels);
  const Vec off = uniform_vec(C, seed, -3.0, 3.0), spread = uniform_vec(C, seed + 1, 0.5, 2.0);
  Vec x = uniform_vec(static_cast<std::size_t>(product(dims)), seed + 2, -1.0, 1.0);
  for (std::size_t k = 0; k < x.size(); ++k) {
    const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
    x[k] = off[c] + spread[c] * x[k];
  }
  return x;
}

// Bitwise equality of two tensors' storage (same scalar type and size).
template <class A, class B>
bool bits_equal(const A& a, const B& b) {
  static_assert(sizeof(typename A::Scalar) == sizeof(typename B::Scalar), "same scalar size");
  if (a.size() != b.size()) return false;
  return a.size() == 0 ||
         std::memcmp(a.data(), b.data(), sizeof(typename A::Scalar) * static_cast<std::size_t>(a.size())) == 0;
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// ---------------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------------

struct Mismatch {
  bool ok = true;
  std::size_t count = 0;  // entries outside tolerance (or of different NaN-ness)
  std::size_t worst = 0;  // index of the worst entry (ratio error / tolerance)
  double got = 0, want = 0, tol = 0, ratio = 0;
  std::string what;
  std::string str() const {
    std::ostringstream s;
    s.precision(17);
    s << what << ": " << (ok ? "ok" : "MISMATCH") << ", " << count << " bad entries; worst at " << worst << ": got "
      << got << " want " << want << " |diff| " << std::fabs(got - want) << " tol " << tol << " (diff/tol " << ratio
      << ")";
    return s.str();
  }
};

// Entry i passes when |got - want| <= tol_i; NaN must match NaN, equal infinities match.
inline Mismatch compare_tol(const Vec& got, const Vec& want, const std::function<double(std::size_t)>& tol,
                            const std::string& what) {
  Mismatch m;
  m.what = what;
  if (got.size() != want.size()) {
    m.ok = false;
    m.count = std::max(got.size(), want.size());
    m.what += " (size " + std::to_string(got.size()) + " vs " + std::to_string(want.size()) + ")";
    return m;
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i], t = tol(i);
    double ratio;
    if (std::isnan(g) || std::isnan(w)) {
      ratio = (std::isnan(g) && std::isnan(w)) ? 0.0 : std::numeric_limits<double>::infinity();
    } else if (std::isinf(g) || std::isinf(w)) {
      ratio = (g == w) ? 0.0 : std::numeric_limits<double>::infinity();
    } else {
      const double d = std::fabs(g - w);
      ratio = d == 0 ? 0.0 : (t > 0 ? d / t : std::numeric_limits<double>::infinity());
    }
    if (ratio > 1.0) {
      m.ok = false;
      ++m.count;
    }
    if (i == 0 || ratio > m.ratio) {
      m.ratio = ratio;
      m.worst = i;
      m.got = g;
      m.want = w;
      m.tol = t;
    }
  }
  return m;
}

// tol_i = atol + rtol * |want_i|
inline Mismatch compare(const Vec& got, const Vec& want, double atol, double rtol, const std::string& what = "values") {
  return compare_tol(
      got, want, [&](std::size_t i) { return atol + rtol * std::fabs(want[i]); }, what);
}

// tol_i = rel * scale_i (+ tiny, so that an all-zero scale still accepts exact zeros and denormal noise)
inline Mismatch compare_scaled(const Vec& got, const Vec& want, const Vec& scale, double rel,
                               const std::string& what = "values") {
  return compare_tol(
      got, want, [&](std::size_t i) { return rel * scale[i] + 1e-300; }, what);
}

// tol_i = rel * scale_i + abs_rel * round_i (round may be empty)
inline Mismatch compare_scaled2(const Vec& got, const Vec& want, const Vec& scale, double rel, const Vec& round,
                                double abs_rel, const std::string& what = "values") {
  return compare_tol(
      got, want, [&](std::size_t i) { return rel * scale[i] + (round.empty() ? 0.0 : abs_rel * round[i]) + 1e-300; },
      what);
}

// Largest |a - b|; infinite when the sizes differ or an entry is NaN on either side.
inline double max_abs_diff(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return m;
}

// Largest |a - b| / (abs_floor + |b|): a relative error that does not blow up near zero; infinite when
// the sizes differ or an entry is NaN on either side.
inline double max_rel_diff(const Vec& a, const Vec& b, double abs_floor = 1.0) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]) / (abs_floor + std::fabs(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return m;
}

inline double max_abs(const Vec& a) {
  double m = 0;
  for (double v : a) m = std::max(m, std::fabs(v));
  return m;
}

// ---------------------------------------------------------------------------------------------------
// Driving a functor (any class with forward(x, y) / backward(x, dy, stats, dx), e.g. normkit's
// LayerNorm, RMSNorm, BatchNorm). Inputs and outputs travel as row-major std::vector<double>.
// ---------------------------------------------------------------------------------------------------

template <class Stats>
struct ForwardRun {
  Vec y;  // row-major
  Stats stats;
};

// x is built in layout LX, y in layout LY (filled with NaN first, so that an unwritten entry shows).
template <class T, int LX, int LY, std::size_t R, class Fn>
auto run_forward(Fn&& fn, const std::array<Index, R>& dims, const Vec& x_rowmajor) {
  auto x = make_tensor<T, static_cast<int>(R), LX>(dims, x_rowmajor);
  auto y = filled_tensor<T, static_cast<int>(R), LY>(dims, std::numeric_limits<T>::quiet_NaN());
  auto stats = fn.forward(x, y);
  return ForwardRun<decltype(stats)>{to_rowmajor(y), std::move(stats)};
}

template <class Grads>
struct BackwardRun {
  Vec dx;  // row-major
  Grads grads;
};

template <class T, int LX, int LD, std::size_t R, class Fn, class Stats>
auto run_backward(Fn&& fn, const std::array<Index, R>& dims, const Vec& x_rowmajor, const Vec& dy_rowmajor,
                  const Stats& stats) {
  auto x = make_tensor<T, static_cast<int>(R), LX>(dims, x_rowmajor);
  auto dy = make_tensor<T, static_cast<int>(R), LD>(dims, dy_rowmajor);
  auto dx = filled_tensor<T, static_cast<int>(R), LD>(dims, std::numeric_limits<T>::quiet_NaN());
  auto grads = fn.backward(x, dy, stats, dx);
  return BackwardRun<decltype(grads)>{to_rowmajor(dx), std::move(grads)};
}

// ---------------------------------------------------------------------------------------------------
// Float64 reference: LayerNorm and RMSNorm over rows of a [rows x features] row-major matrix
// ---------------------------------------------------------------------------------------------------

struct RowNormSpec {
  bool rms = false;  // RMSNorm: mean = 0, var = mean(x^2)
  double eps = 1e-5;
  bool outside = false;    // false: xhat = (x-mu)/sqrt(var+eps); true: xhat = (x-mu)/(sqrt(var)+eps)
  bool has_weight = true;  // y = xhat * w (+ b)
  bool has_bias = true;
};

struct RowNormForward {
  Vec y, xhat;  // rows * features
  Vec mean;     // rows (zeros for RMSNorm)
  Vec var;      // rows: biased variance (LayerNorm) or mean square (RMSNorm)
  Vec rstd;     // rows: the multiplier of (x - mean)
};

inline double ref_rstd(double var, const RowNormSpec& s) {
  return s.outside ? 1.0 / (std::sqrt(var) + s.eps) : 1.0 / std::sqrt(var + s.eps);
}

// w and b have `features` entries (ignored when absent; may then be empty).
inline RowNormForward row_norm_forward(const Vec& x, Index rows, Index features, const RowNormSpec& s, const Vec& w,
                                       const Vec& b) {
  RowNormForward f;
  const auto R = static_cast<std::size_t>(rows), F = static_cast<std::size_t>(features);
  f.y.assign(R * F, 0.0);
  f.xhat.assign(R * F, 0.0);
  f.mean.assign(R, 0.0);
  f.var.assign(R, 0.0);
  f.rstd.assign(R, 0.0);
  for (std::size_t r = 0; r < R; ++r) {
    const double* xr = x.data() + r * F;
    long double mu = 0;
    if (!s.rms) {
      for (std::size_t j = 0; j < F; ++j) mu += xr[j];
      mu /= static_cast<long double>(F);
    }
    long double var = 0;  // two-pass: sum of squared deviations
    for (std::size_t j = 0; j < F; ++j) {
      const long double d = static_cast<long double>(xr[j]) - mu;
      var += d * d;
    }
    var /= static_cast<long double>(F);
    const long double rstd = s.outside ? 1.0L / (std::sqrt(var) + static_cast<long double>(s.eps))
                                       : 1.0L / std::sqrt(var + static_cast<long double>(s.eps));
    f.mean[r] = static_cast<double>(mu);
    f.var[r] = static_cast<double>(var);
    f.rstd[r] = static_cast<double>(rstd);
    for (std::size_t j = 0; j < F; ++j) {
      const long double xh = (static_cast<long double>(xr[j]) - mu) * rstd;
      long double y = xh;
      if (s.has_weight) y *= static_cast<long double>(w[j]);
      if (s.has_weight && s.has_bias) y += static_cast<long double>(b[j]);
      f.xhat[r * F + j] = static_cast<double>(xh);
      f.y[r * F + j] = static_cast<double>(y);
    }
  }
  return f;
}

struct RowNormBackward {
  Vec dx;      // rows * features
  Vec dw, db;  // features (empty when the parameter is absent)
  // Condition-aware error scales: the sum of the absolute values of the terms that make up each result,
  // so that "error <= c * unit_roundoff * scale" is a fair test however much the terms cancel.
  Vec dx_scale, dw_scale, db_scale;
  // dweight's sensitivity to rounding x - mean: sum_rows |dy| * rstd * (|x| + |mean|). A T implementation
  // cannot beat ~u_T * dw_round on a feature whose terms dy * xhat are all tiny (x close to the mean);
  // use "rel * dw_scale + c * u_T * dw_round" as a tolerance for unit-scale data (not at a large offset,
  // where a careful implementation does much better than that).
  Vec dw_round;
};

// Chain rule written out from y = xhat*w + b, xhat = (x - mu) * r(var), var = mean((x - mu)^2)
// (LayerNorm) or y = x * r(ms) * w + b, ms = mean(x^2) (RMSNorm):
//   g_i      = dy_i * w_i
//   dL/dvar  = sum_j g_j (x_j - mu) * dr/dvar,  dr/dvar = -r^3/2 (inside) or -r^2/(2 sqrt(var)) (outside)
//   dx_i     = g_i r + dL/dvar * 2 (x_i - mu)/n - [LayerNorm only] r * sum_j g_j / n
// With var = 0 and eps outside the sqrt the middle term is 0 * inf; every x_j - mu is then 0, so the
// term is taken as 0 (the contract: dx = rstd * (g - mean(g))).
inline RowNormBackward row_norm_backward(const Vec& x, const Vec& dy, Index rows, Index features, const RowNormSpec& s,
                                         const Vec& w) {
  const RowNormForward f = row_norm_forward(x, rows, features, s, w, Vec(static_cast<std::size_t>(features), 0.0));
  const auto R = static_cast<std::size_t>(rows), F = static_cast<std::size_t>(features);
  const long double n = static_cast<long double>(F);
  RowNormBackward b;
  b.dx.assign(R * F, 0.0);
  b.dx_scale.assign(R * F, 0.0);
  if (s.has_weight) {
    b.dw.assign(F, 0.0);
    b.dw_scale.assign(F, 0.0);
    b.dw_round.assign(F, 0.0);
    if (s.has_bias) {
      b.db.assign(F, 0.0);
      b.db_scale.assign(F, 0.0);
    }
  }
  std::vector<long double> dw(F, 0.0L), db(F, 0.0L), dws(F, 0.0L), dbs(F, 0.0L), dwr(F, 0.0L);
  for (std::size_t r = 0; r < R; ++r) {
    const long double mu = f.mean[r], var = f.var[r], rs = f.rstd[r];
    long double drdvar;
    if (s.outside) drdvar = var > 0 ? -rs * rs / (2.0L * std::sqrt(var)) : 0.0L;
    else drdvar = -rs * rs * rs / 2.0L;
    long double sum_g = 0, sum_gd = 0, abs_g = 0, abs_gd = 0;
    for (std::size_t j = 0; j < F; ++j) {
      const long double g = static_cast<long double>(dy[r * F + j]) *
                            (s.has_weight ? static_cast<long double>(w[j]) : 1.0L);
      const long double d = static_cast<long double>(x[r * F + j]) - mu;
      sum_g += g;
      sum_gd += g * d;
      abs_g += std::fabs(g);
      abs_gd += std::fabs(g * d);
    }
    const long double dvar = sum_gd * drdvar;
    for (std::size_t j = 0; j < F; ++j) {
      const long double g = static_cast<long double>(dy[r * F + j]) *
                            (s.has_weight ? static_cast<long double>(w[j]) : 1.0L);
      const long double d = static_cast<long double>(x[r * F + j]) - mu;
      long double dx = g * rs + dvar * 2.0L * d / n;
      long double sc = std::fabs(g * rs) + std::fabs(abs_gd * drdvar * 2.0L * d / n);
      if (!s.rms) {
        dx -= rs * sum_g / n;
        sc += rs * abs_g / n;
      }
      b.dx[r * F + j] = static_cast<double>(dx);
      b.dx_scale[r * F + j] = static_cast<double>(sc);
      const long double dyv = dy[r * F + j], xh = f.xhat[r * F + j];
      dw[j] += dyv * xh;
      dws[j] += std::fabs(dyv * xh);
      dwr[j] += std::fabs(dyv) * rs * (std::fabs(static_cast<long double>(x[r * F + j])) + std::fabs(mu));
      db[j] += dyv;
      dbs[j] += std::fabs(dyv);
    }
  }
  for (std::size_t j = 0; j < b.dw.size(); ++j) {
    b.dw[j] = static_cast<double>(dw[j]);
    b.dw_scale[j] = static_cast<double>(dws[j]);
    b.dw_round[j] = static_cast<double>(dwr[j]);
  }
  for (std::size_t j = 0; j < b.db.size(); ++j) {
    b.db[j] = static_cast<double>(db[j]);
    b.db_scale[j] = static_cast<double>(dbs[j]);
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------
// Float64 reference: BatchNorm, PyTorch's torch.nn.BatchNorm{1,2,3}d semantics. Data are row-major
// std::vector<double> (to_rowmajor), the channel on axis `axis` of the PyTorch dims.
// ---------------------------------------------------------------------------------------------------
struct RefOutput {
  std::vector<double> y;
  std::vector<double> mean;  // the mean subtracted, per channel
  std::vector<double> rstd;  // the multiplier applied to (x - mean), per channel
};

struct RefGrads {
  std::vector<double> dx, dweight, dbias;
};

struct RefBatchNorm {
  Index C;
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;
  bool affine = true;
  bool track = true;
  bool training = true;
  std::vector<double> weight, bias, running_mean, running_var;
  std::int64_t num_batches_tracked = 0;

  RefBatchNorm(Index c, double eps_, std::optional<double> momentum_, bool affine_, bool track_)
      : C(c), eps(eps_), momentum(momentum_), affine(affine_), track(track_) {
    if (affine) {
      weight.assign(static_cast<std::size_t>(C), 1.0);
      bias.assign(static_cast<std::size_t>(C), 0.0);
    }
    if (track) {
      running_mean.assign(static_cast<std::size_t>(C), 0.0);
      running_var.assign(static_cast<std::size_t>(C), 1.0);
    }
  }

  bool uses_batch_stats() const { return training || !track; }

  // Biased mean and variance per channel (two passes, float64).
  static void batch_moments(const std::vector<Index>& dims, int axis, const std::vector<double>& x,
                            std::vector<double>& mean, std::vector<double>& var) {
    const ChannelLayout lay(dims, axis);
    const auto C = static_cast<std::size_t>(lay.channels);
    mean.assign(C, 0.0);
    var.assign(C, 0.0);
    for (std::size_t k = 0; k < x.size(); ++k)
      mean[static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)))] += x[k];
    for (auto& m : mean) m /= static_cast<double>(lay.per_channel);
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      var[c] += (x[k] - mean[c]) * (x[k] - mean[c]);
    }
    for (auto& v : var) v /= static_cast<double>(lay.per_channel);
  }

  RefOutput forward(const std::vector<Index>& dims, int axis, const std::vector<double>& x) {
    const ChannelLayout lay(dims, axis);
    if (lay.channels != C) throw std::logic_error("RefBatchNorm: channel count");
    RefOutput out;
    out.y.assign(x.size(), 0.0);
    const auto Cs = static_cast<std::size_t>(C);
    if (uses_batch_stats()) {
      if (x.empty()) {  // an empty batch: nothing to normalize, no state change
        out.mean.assign(Cs, 0.0);
        out.rstd.assign(Cs, 0.0);
        return out;
      }
      if (training && lay.per_channel == 1)
        throw std::invalid_argument("RefBatchNorm: expected more than 1 value per channel when training");
      std::vector<double> var;
      batch_moments(dims, axis, x, out.mean, var);
      out.rstd.resize(Cs);
      for (std::size_t c = 0; c < Cs; ++c) out.rstd[c] = 1.0 / std::sqrt(var[c] + eps);
      if (training && track) {
        ++num_batches_tracked;
        const double f = momentum ? *momentum : 1.0 / static_cast<double>(num_batches_tracked);
        const double n = static_cast<double>(lay.per_channel);
        for (std::size_t c = 0; c < Cs; ++c) {
          running_mean[c] = (1 - f) * running_mean[c] + f * out.mean[c];
          running_var[c] = (1 - f) * running_var[c] + f * var[c] * n / (n - 1);
        }
      }
    } else {
      out.mean = running_mean;
      out.rstd.resize(Cs);
      for (std::size_t c = 0; c < Cs; ++c) out.rstd[c] = 1.0 / std::sqrt(running_var[c] + eps);
    }
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      double v = (x[k] - out.mean[c]) * out.rstd[c];
      if (affine) v = v * weight[c] + bias[c];
      out.y[k] = v;
    }
    return out;
  }

  // Backward at the statistics `mean`, `rstd` of the forward (mode as it is now).
  RefGrads backward(const std::vector<Index>& dims, int axis, const std::vector<double>& x,
                    const std::vector<double>& dy, const std::vector<double>& mean,
                    const std::vector<double>& rstd) const {
    const ChannelLayout lay(dims, axis);
    const auto Cs = static_cast<std::size_t>(C);
    RefGrads g;
    g.dx.assign(x.size(), 0.0);
    std::vector<double> sum_dy(Cs, 0.0), sum_dy_xhat(Cs, 0.0), sum_g(Cs, 0.0), sum_g_xhat(Cs, 0.0);
    auto w = [&](std::size_t c) { return affine ? weight[c] : 1.0; };
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      const double xhat = (x[k] - mean[c]) * rstd[c];
      sum_dy[c] += dy[k];
      sum_dy_xhat[c] += dy[k] * xhat;
      sum_g[c] += dy[k] * w(c);
      sum_g_xhat[c] += dy[k] * w(c) * xhat;
    }
    const double n = static_cast<double>(lay.per_channel);
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      const double gk = dy[k] * w(c);
      if (uses_batch_stats()) {
        const double xhat = (x[k] - mean[c]) * rstd[c];
        g.dx[k] = rstd[c] * (gk - sum_g[c] / n - xhat * sum_g_xhat[c] / n);
      } else {
        g.dx[k] = gk * rstd[c];
      }
    }
    if (affine) {
      g.dweight = sum_dy_xhat;
      g.dbias = sum_dy;
    }
    return g;
  }
};

// Per-channel bound for sums over a channel: sum of |terms| (the natural scale of rounding error).
inline std::vector<double> channel_abs_sums(const std::vector<Index>& dims, int axis,
                                            const std::vector<double>& terms) {
  const ChannelLayout lay(dims, axis);
  std::vector<double> s(static_cast<std::size_t>(lay.channels), 0.0);
  for (std::size_t k = 0; k < terms.size(); ++k)
    s[static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)))] += std::abs(terms[k]);
  return s;
}

// ---------------------------------------------------------------------------------------------------
// Finite differences
// ---------------------------------------------------------------------------------------------------

// Central differences: g_i = (f(p + h e_i) - f(p - h e_i)) / (2h). Truncation error is O(h^2 f'''),
// rounding error O(u |f| / h); with h ~ 1e-5 and O(1) data both are ~1e-10 in double.
inline Vec fd_gradient(const std::function<double(const Vec&)>& f, Vec p, double h) {
  Vec g(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double keep = p[i];
    p[i] = keep + h;
    const double fp = f(p);
    p[i] = keep - h;
    const double fm = f(p);
    p[i] = keep;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

inline double dot(const Vec& a, const Vec& b) {
  long double s = 0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) s += static_cast<long double>(a[i]) * b[i];
  return static_cast<double>(s);
}

inline Vec abs_plus(const Vec& v, double c) {
  Vec o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = std::fabs(v[i]) + c;
  return o;
}

}  // namespace nkref
