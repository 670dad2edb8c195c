// bench/dispatch_rows.hpp — the entry point normkit_bench_dispatch compiles per x86-64 level.
#pragma once

#include <normkit/dispatch.hpp>
#include <normkit/normkit.hpp>

NORMKIT_ISA_DECLARE(void, nkbench_layer_norm_rows,
                    (const normkit::LayerNorm<float>& ln, const float* x, float* y, Eigen::Index rows));
