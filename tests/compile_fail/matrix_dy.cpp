// Must not compile: an Eigen::Matrix passed as dy to backward.
#include <normkit/normkit.hpp>

int main() {
  normkit::RMSNorm<float> rms(4);
  Eigen::Tensor<float, 2> x(2, 4), dx(2, 4);
  x.setRandom();
  Eigen::MatrixXf dy = Eigen::MatrixXf::Ones(2, 4);
  const normkit::NormStats<float> stats = rms.forward(x, dx);
  rms.backward(x, dy, stats, dx);
  return 0;
}
