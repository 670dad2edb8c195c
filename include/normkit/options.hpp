// normkit/options.hpp — the option structs and the small value types every functor shares.
//
// EpsPlacement says where eps enters the normalizer:
//   InsideSqrt  : xhat = (x - mean) / sqrt(var + eps)     (PyTorch, oneDNN, ONNX; the default)
//   OutsideSqrt : xhat = (x - mean) / (sqrt(var) + eps)   (the formulas in some of the seed documents)
// RMSNorm reads mean = 0 and var = mean(x^2). NormStats::rstd is always the multiplier applied to
// (x - mean), so backward never needs to know which placement produced it.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>

// The Eigen::ThreadPoolDevice overloads need the Tensor module's thread pool.
#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif
#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>

namespace normkit {

enum class EpsPlacement { InsideSqrt, OutsideSqrt };

// Storage types: float, double, and the 16-bit Eigen::bfloat16 and Eigen::half.
template <class T>
inline constexpr bool is_storage_v = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                     std::is_same_v<T, Eigen::bfloat16> || std::is_same_v<T, Eigen::half>;

// Statistics and reductions run in accum_t<T>: double for double, float for everything narrower.
template <class T>
using accum_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Parameters (weight, bias, running statistics, their gradients) are stored as P: T itself (the
// default), or accum_t<T> for mixed precision (bfloat16/half activations with float parameters).
template <class T, class P>
inline constexpr bool is_param_type_v = std::is_same_v<P, T> || std::is_same_v<P, accum_t<T>>;

// Where a NormStats' statistics came from. Backward follows this, not the functor's current mode, as
// autograd does: BatchNorm stats from a training forward get the full batch gradient even if eval()
// was called since, stats from an eval forward (running statistics) get dx = dy * weight * rstd.
enum class StatsSource {
  Batch,    // computed from the forward's own input (LayerNorm/RMSNorm always; BatchNorm training)
  Running,  // BatchNorm's running statistics (eval mode with track_running_stats)
  Synced,   // SyncBatchNorm training (mpi.hpp): the batch of every rank; its backward all-reduces
};

// What forward saves for backward, one entry per normalized group (a row for LayerNorm/RMSNorm, a
// channel for BatchNorm). Rows are ordered as the leading indices in row-major order, whatever the
// tensor's layout.
template <class T>
struct NormStats {
  Eigen::Tensor<accum_t<T>, 1> mean;  // empty for RMSNorm
  Eigen::Tensor<accum_t<T>, 1> rstd;  // 1/sqrt(var+eps) or 1/(sqrt(var)+eps)
  // normkit extension: the rounding error of `mean` (mean_exact ~= mean + mean_lo). It keeps
  // x - mean accurate when |mean| >> std, in forward and in backward. May be left empty (= zeros),
  // e.g. for stats that come from elsewhere.
  Eigen::Tensor<accum_t<T>, 1> mean_lo;
  StatsSource source = StatsSource::Batch;  // normkit extension: set by forward
};

// Parameter gradients returned by backward, in the parameters' type P; a member is empty (size 0)
// when that parameter is absent.
template <class P>
struct NormGrads {
  Eigen::Tensor<P, 1> weight;
  Eigen::Tensor<P, 1> bias;
};

struct LayerNormOptions {
  double eps = 1e-5;
  bool elementwise_affine = true;  // learnable weight (gamma), initialised to 1
  bool bias = true;                // learnable bias (beta), initialised to 0; only with affine
  EpsPlacement eps_placement = EpsPlacement::InsideSqrt;
  double weight_offset = 0;  // y = xhat * (weight_offset + weight) + bias, the sum in accum_t (Gemma: 1)
};

struct RMSNormOptions {
  double eps = 1e-6;
  bool elementwise_affine = true;
  bool bias = false;
  EpsPlacement eps_placement = EpsPlacement::InsideSqrt;
  double weight_offset = 0;  // y = xhat * (weight_offset + weight) + bias, the sum in accum_t (Gemma: 1)
};

struct BatchNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // running = (1 - m) * running + m * batch; nullopt = cumulative average
  bool affine = true;
  bool track_running_stats = true;
  Eigen::Index channel_axis = 1;  // (N, C, ...) as PyTorch; -1 = last axis (channels-last)
};

}  // namespace normkit
