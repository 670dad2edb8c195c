// Must not compile: forward's output y is a const Tensor&.
#include <normkit/normkit.hpp>

int main() {
  normkit::LayerNorm<float> ln(4);
  Eigen::Tensor<float, 2> x(2, 4), y(2, 4);
  x.setRandom();
  const Eigen::Tensor<float, 2>& read_only = y;
  ln.forward(x, read_only);
  return 0;
}
