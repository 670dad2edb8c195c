// Must not compile: a chip (an expression, not a tensor) passed to operator().
#include <normkit/normkit.hpp>

int main() {
  normkit::BatchNorm<float> bn(3);
  Eigen::Tensor<float, 3, Eigen::RowMajor> x(2, 4, 3);
  x.setRandom();
  const auto y = bn(x.chip(0, 0));
  return static_cast<int>(y.size());
}
