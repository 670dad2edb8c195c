// normkit/layer_norm.hpp — LayerNorm<T, P = T>: normalization over the trailing `normalized_shape` axes.
//
// For every index of the leading axes (a "row" of F = prod(normalized_shape) values):
//     mean = sum(x) / F,   var = sum((x - mean)^2) / F            (biased, as PyTorch)
//     xhat = (x - mean) * rstd,  rstd = 1/sqrt(var + eps)  (EpsPlacement::InsideSqrt, PyTorch's)
//                                     or 1/(sqrt(var) + eps)  (EpsPlacement::OutsideSqrt)
//     y    = xhat * weight + bias                 (weight, bias: flattened normalized_shape, row-major)
// backward, with g = dy * weight:
//     dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows dy * xhat,  dbias = sum_rows dy
// Matches torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias). Any rank, RowMajor or
// ColMajor, Tensor or TensorMap; the Eigen::ThreadPoolDevice overloads split rows across threads.
// Types: T (x, y, dy, dx) is float, double, Eigen::bfloat16 or Eigen::half; statistics are
// accumulated and saved in accum_t<T> (double for double, float otherwise); P (weight, bias and
// their gradients) is T or, for mixed precision, float beside bfloat16/half.
#pragma once

#include "trailing_norm.hpp"

namespace normkit {

template <class T, class P = T>
class LayerNorm : public detail::TrailingNorm<T, P> {
 public:
  explicit LayerNorm(Eigen::Index features, LayerNormOptions options = {}) : LayerNorm({features}, options) {}
  LayerNorm(std::initializer_list<Eigen::Index> normalized_shape, LayerNormOptions options = {})
      : LayerNorm(std::vector<Eigen::Index>(normalized_shape), options) {}
  // normkit extension: a normalized_shape known only at run time.
  explicit LayerNorm(std::vector<Eigen::Index> normalized_shape, LayerNormOptions options = {})
      : detail::TrailingNorm<T, P>("LayerNorm", std::move(normalized_shape), options.eps, options.elementwise_affine,
                                   options.bias, options.eps_placement, /*centered=*/true, options.weight_offset),
        options_(options) {}

  const LayerNormOptions& options() const { return options_; }

 private:
  LayerNormOptions options_;
};

}  // namespace normkit
