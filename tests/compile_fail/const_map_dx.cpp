// Must not compile: backward's output dx is a TensorMap over const data.
#include <vector>

#include <normkit/normkit.hpp>

int main() {
  normkit::BatchNorm<float> bn(4);
  Eigen::Tensor<float, 2> x(8, 4), y(8, 4);
  x.setRandom();
  const normkit::NormStats<float> stats = bn.forward(x, y);
  const std::vector<float> buffer(32);
  bn.backward(x, y, stats, Eigen::TensorMap<const Eigen::Tensor<float, 2>>(buffer.data(), 8, 4));
  return 0;
}
