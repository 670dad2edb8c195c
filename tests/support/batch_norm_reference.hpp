// tests/support/batch_norm_reference.hpp — an independent float64 model of PyTorch's BatchNorm,
// written from the formulas (not from the library), plus the small tensor helpers the BatchNorm and
// error tests share.
//
// Data is kept as std::vector<double> in *logical* row-major order: element k of a tensor with
// PyTorch dimensions d[0..R) is x[i0, i1, ..., i(R-1)] with the last index fastest, whatever the
// Eigen layout of the tensor it is copied into. to_tensor / from_tensor do the copy through
// coeff/coeffRef with full index arrays, so they never depend on the storage order.
#pragma once

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include <unsupported/Eigen/CXX11/Tensor>

namespace bnref {

using Index = Eigen::Index;

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers (splitmix64): identical on every platform and standard library.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  std::uint64_t next() {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

 private:
  std::uint64_t s_;
};

// ---------------------------------------------------------------------------------------------
// Shapes.
inline Index numel(const std::vector<Index>& dims) {
  Index n = 1;
  for (Index d : dims) n *= d;
  return n;
}

// Channel axis in [0, R) from the option value (negatives counted from the end).
inline int normalize_axis(Index channel_axis, int rank) {
  const Index a = channel_axis < 0 ? channel_axis + rank : channel_axis;
  if (a < 0 || a >= rank) throw std::invalid_argument("bnref: channel_axis out of range");
  return static_cast<int>(a);
}

struct Layout {  // where the channel of a logical row-major flat index is
  Index channels = 0;
  Index inner = 1;  // product of the dims after the channel axis
  Index per_channel = 0;  // number of elements per channel (N * spatial)
  Layout(const std::vector<Index>& dims, int axis) {
    channels = dims[static_cast<std::size_t>(axis)];
    for (std::size_t i = static_cast<std::size_t>(axis) + 1; i < dims.size(); ++i) inner *= dims[i];
    per_channel = channels > 0 ? numel(dims) / channels : 0;
  }
  Index channel_of(Index k) const { return (k / inner) % channels; }
};

// Values with a per-channel offset and spread, so that a mix-up of channels shows.
inline std::vector<double> random_input(const std::vector<Index>& dims, int axis, std::uint64_t seed) {
  Rng rng(seed);
  const Layout lay(dims, axis);
  std::vector<double> off(static_cast<std::size_t>(lay.channels)), spread(off.size());
  for (std::size_t c = 0; c < off.size(); ++c) {
    off[c] = rng.uniform(-3.0, 3.0);
    spread[c] = rng.uniform(0.5, 2.0);
  }
  std::vector<double> x(static_cast<std::size_t>(numel(dims)));
  for (std::size_t k = 0; k < x.size(); ++k) {
    const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
    x[k] = off[c] + spread[c] * rng.uniform(-1.0, 1.0);
  }
  return x;
}

inline std::vector<double> random_vector(std::size_t n, double lo, double hi, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<double> v(n);
  for (auto& e : v) e = rng.uniform(lo, hi);
  return v;
}

// Round every value to T (so that the reference sees exactly what the library sees).
template <class T>
std::vector<double> rounded(std::vector<double> v) {
  for (auto& e : v) e = static_cast<double>(static_cast<T>(e));
  return v;
}

// ---------------------------------------------------------------------------------------------
// Tensors <-> logical row-major vectors.
template <int R>
bool next_index(std::array<Index, static_cast<std::size_t>(R)>& idx, const std::array<Index, static_cast<std::size_t>(R)>& dims) {
  for (int i = R - 1; i >= 0; --i) {
    if (++idx[static_cast<std::size_t>(i)] < dims[static_cast<std::size_t>(i)]) return true;
    idx[static_cast<std::size_t>(i)] = 0;
  }
  return false;
}

template <class TensorLike>
std::array<Index, TensorLike::NumIndices> dims_of(const TensorLike& t) {
  std::array<Index, TensorLike::NumIndices> d{};
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = t.dimensions()[i];  // dimension() takes size_t or Index
  return d;
}

template <class TensorLike>
void fill(TensorLike&& t, const std::vector<double>& v) {
  using TL = std::decay_t<TensorLike>;
  using S = typename TL::Scalar;
  constexpr int R = TL::NumIndices;
  const auto dims = dims_of(t);
  std::array<Index, static_cast<std::size_t>(R)> idx{};
  if (t.size() == 0) return;
  if (static_cast<Index>(v.size()) != t.size()) throw std::logic_error("bnref::fill: size mismatch");
  std::size_t k = 0;
  do {
    t(idx) = static_cast<S>(v[k++]);
  } while (next_index<R>(idx, dims));
}

template <class TensorLike>
std::vector<double> values(const TensorLike& t) {
  constexpr int R = TensorLike::NumIndices;
  std::vector<double> v;
  if (t.size() == 0) return v;
  v.reserve(static_cast<std::size_t>(t.size()));
  const auto dims = dims_of(t);
  std::array<Index, static_cast<std::size_t>(R)> idx{};
  do {
    v.push_back(static_cast<double>(t(idx)));
  } while (next_index<R>(idx, dims));
  return v;
}

template <class S>
std::vector<double> values1(const Eigen::Tensor<S, 1>& t) {
  std::vector<double> v(static_cast<std::size_t>(t.size()));
  for (Index i = 0; i < t.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(t(i));
  return v;
}

template <class S>
Eigen::Tensor<S, 1> tensor1(const std::vector<double>& v) {
  Eigen::Tensor<S, 1> t(static_cast<Index>(v.size()));
  for (std::size_t i = 0; i < v.size(); ++i) t(static_cast<Index>(i)) = static_cast<S>(v[i]);
  return t;
}

template <class S, int R, int L>
Eigen::Tensor<S, R, L> make_tensor(const std::array<Index, static_cast<std::size_t>(R)>& dims, const std::vector<double>& v) {
  Eigen::Tensor<S, R, L> t(dims);
  fill(t, v);
  return t;
}

template <class S, int R, int L>
Eigen::Tensor<S, R, L> filled(const std::array<Index, static_cast<std::size_t>(R)>& dims, S value) {
  Eigen::Tensor<S, R, L> t(dims);
  t.setConstant(value);
  return t;
}

template <int R>
std::vector<Index> to_vec(const std::array<Index, static_cast<std::size_t>(R)>& d) {
  return std::vector<Index>(d.begin(), d.end());
}

// ---------------------------------------------------------------------------------------------
// Comparisons.
inline double max_abs(const std::vector<double>& a) {
  double m = 0;
  for (double e : a) m = std::max(m, std::abs(e));
  return m;
}

inline double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return m;
}

// Largest |a - b| / (abs_floor + |b|): a relative error that does not blow up near zero.
inline double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b, double abs_floor = 1.0) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]) / (abs_floor + std::abs(b[i]));
    if (!(d <= m)) m = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return m;
}

template <class S>
bool same_bits(S a, S b) {
  return std::memcmp(&a, &b, sizeof(S)) == 0;
}

// ---------------------------------------------------------------------------------------------
// The reference BatchNorm: PyTorch's torch.nn.BatchNorm{1,2,3}d semantics, in float64.
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
    const Layout lay(dims, axis);
    const auto C = static_cast<std::size_t>(lay.channels);
    mean.assign(C, 0.0);
    var.assign(C, 0.0);
    for (std::size_t k = 0; k < x.size(); ++k) mean[static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)))] += x[k];
    for (auto& m : mean) m /= static_cast<double>(lay.per_channel);
    for (std::size_t k = 0; k < x.size(); ++k) {
      const auto c = static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)));
      var[c] += (x[k] - mean[c]) * (x[k] - mean[c]);
    }
    for (auto& v : var) v /= static_cast<double>(lay.per_channel);
  }

  RefOutput forward(const std::vector<Index>& dims, int axis, const std::vector<double>& x) {
    const Layout lay(dims, axis);
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
    const Layout lay(dims, axis);
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
inline std::vector<double> channel_abs_sums(const std::vector<Index>& dims, int axis, const std::vector<double>& terms) {
  const Layout lay(dims, axis);
  std::vector<double> s(static_cast<std::size_t>(lay.channels), 0.0);
  for (std::size_t k = 0; k < terms.size(); ++k)
    s[static_cast<std::size_t>(lay.channel_of(static_cast<Index>(k)))] += std::abs(terms[k]);
  return s;
}

}  // namespace bnref
