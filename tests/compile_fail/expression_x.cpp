// Must not compile: a tensor expression passed as x. The fix is to evaluate it first:
//   Eigen::Tensor<float, 2> x2 = x * 2.f;  ln.forward(x2, y);
#include <normkit/normkit.hpp>

int main() {
  normkit::LayerNorm<float> ln(4);
  Eigen::Tensor<float, 2> x(2, 4), y(2, 4);
  x.setRandom();
  ln.forward(x * 2.f, y);
  return 0;
}
