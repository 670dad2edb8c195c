// Compiled once per level: see normkit_isa_variants() in CMakeLists.txt.
#include "normkit_consumer/forward_rows.hpp"

namespace {

normkit::dispatch::Level compiled_level() {
#if defined(__AVX512F__)
  return normkit::dispatch::Level::v4;
#elif defined(__AVX2__)
  return normkit::dispatch::Level::v3;
#elif defined(__SSE4_2__)
  return normkit::dispatch::Level::v2;
#elif defined(__x86_64__)
  return normkit::dispatch::Level::x86_64;
#else
  return normkit::dispatch::Level::base;
#endif
}

}  // namespace

normkit::dispatch::Level NORMKIT_ISA_FN(layer_norm_rows)(const normkit::LayerNorm<float>& ln, const float* x, float* y,
                                                         Eigen::Index rows) {
  using Rows = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  const Eigen::Index features = ln.weight().size();
  ln.forward(Eigen::TensorMap<const Rows>(x, rows, features), Eigen::TensorMap<Rows>(y, rows, features));
  return compiled_level();
}

normkit::dispatch::Level NORMKIT_ISA_FN(softmax_rows)(const float* x, float* y, Eigen::Index rows, Eigen::Index cols) {
  using Rows = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  normkit::Softmax<float>().forward(Eigen::TensorMap<const Rows>(x, rows, cols), Eigen::TensorMap<Rows>(y, rows, cols));
  return compiled_level();
}
