// normkit/rms_norm.hpp — RMSNorm<T, P = T>: root-mean-square normalization over the trailing axes
// (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019).
//
// For every row of F = prod(normalized_shape) values:
//     ms   = sum(x^2) / F
//     xhat = x * rstd,  rstd = 1/sqrt(ms + eps)  (EpsPlacement::InsideSqrt, the default, as PyTorch's
//                             torch.nn.RMSNorm and LLaMA) or 1/(sqrt(ms) + eps)  (OutsideSqrt)
//     y    = xhat * weight (+ bias when options.bias)
// backward, with g = dy * weight:
//     dx = rstd * (g - xhat * mean(g * xhat)),  dweight = sum_rows dy * xhat,  dbias = sum_rows dy
// NormStats::mean is empty: there is no mean. Default eps is 1e-6.
// Types: T (x, y, dy, dx) is float, double, Eigen::bfloat16 or Eigen::half; statistics are
// accumulated and saved in accum_t<T> (double for double, float otherwise); P (weight, bias and
// their gradients) is T or, for mixed precision, float beside bfloat16/half.
#pragma once

#include "trailing_norm.hpp"

namespace normkit {

template <class T, class P = T>
class RMSNorm : public detail::TrailingNorm<T, P> {
 public:
  explicit RMSNorm(Eigen::Index features, RMSNormOptions options = {}) : RMSNorm({features}, options) {}
  RMSNorm(std::initializer_list<Eigen::Index> normalized_shape, RMSNormOptions options = {})
      : RMSNorm(std::vector<Eigen::Index>(normalized_shape), options) {}
  // normkit extension: a normalized_shape known only at run time.
  explicit RMSNorm(std::vector<Eigen::Index> normalized_shape, RMSNormOptions options = {})
      : detail::TrailingNorm<T, P>("RMSNorm", std::move(normalized_shape), options.eps, options.elementwise_affine,
                                   options.bias, options.eps_placement, /*centered=*/false, options.weight_offset),
        options_(options) {}

  const RMSNormOptions& options() const { return options_; }

 private:
  RMSNormOptions options_;
};

}  // namespace normkit
