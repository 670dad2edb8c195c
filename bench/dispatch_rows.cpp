// bench/dispatch_rows.cpp — LayerNorm forward over contiguous rows, compiled once per x86-64 level
// by normkit_isa_variants() for normkit_bench_dispatch (bench_dispatch.cpp).
#include "dispatch_rows.hpp"

void NORMKIT_ISA_FN(nkbench_layer_norm_rows)(const normkit::LayerNorm<float>& ln, const float* x, float* y,
                                             Eigen::Index rows) {
  using Rows = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  const Eigen::Index features = ln.weight().size();
  ln.forward(Eigen::TensorMap<const Rows>(x, rows, features), Eigen::TensorMap<Rows>(y, rows, features));
}
