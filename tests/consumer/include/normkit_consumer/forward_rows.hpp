// The consumer's hot path, compiled once per x86-64 level by normkit_isa_variants() and chosen at
// run time (normkit/dispatch.hpp): only pointers and a const functor cross the boundary.
#pragma once

#include <normkit/dispatch.hpp>
#include <normkit/normkit.hpp>

// y = ln(x) for `rows` contiguous rows of ln's features; returns the level it was compiled for.
NORMKIT_ISA_DECLARE(normkit::dispatch::Level, layer_norm_rows,
                    (const normkit::LayerNorm<float>& ln, const float* x, float* y, Eigen::Index rows));
// y = softmax(x) over each of `rows` contiguous rows of `cols` values; returns the level as above.
NORMKIT_ISA_DECLARE(normkit::dispatch::Level, softmax_rows,
                    (const float* x, float* y, Eigen::Index rows, Eigen::Index cols));
