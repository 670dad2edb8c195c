// Must not compile: an Eigen::Matrix passed as x. The fix is a TensorMap over the Matrix's data:
//   ln.forward(Eigen::TensorMap<Eigen::Tensor<float, 2>>(m.data(), m.rows(), m.cols()), y);
#include <normkit/normkit.hpp>

int main() {
  normkit::LayerNorm<float> ln(4);
  Eigen::MatrixXf m = Eigen::MatrixXf::Random(2, 4);
  Eigen::Tensor<float, 2> y(2, 4);
  ln.forward(m, y);
  return 0;
}
