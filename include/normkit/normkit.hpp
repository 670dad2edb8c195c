// normkit/normkit.hpp — everything: LayerNorm, RMSNorm, BatchNorm, GroupNorm and InstanceNorm for
// Eigen tensors.
//
// Each functor has forward(x, y) -> NormStats, operator()(x) -> y, and
// backward(x, dy, stats, dx) -> NormGrads, plus overloads taking an Eigen::ThreadPoolDevice first.
// Defines EIGEN_USE_THREADS (when not yet defined) before Eigen's Tensor module so that the
// thread-pool overloads are always there. See each header for its formula and eps convention, and
// docs/api.md for the whole reference. simd_path() names the SIMD instruction set compiled for;
// deepnorm.hpp gives DeepNet's residual and initialization constants.
#pragma once

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif
#include <unsupported/Eigen/CXX11/Tensor>

#include "batch_norm.hpp"
#include "cross_entropy.hpp"
#include "deepnorm.hpp"
#include "errors.hpp"
#include "group_norm.hpp"
#include "instance_norm.hpp"
#include "layer_norm.hpp"
#include "options.hpp"
#include "rms_norm.hpp"
#include "simd_path.hpp"
#include "softmax.hpp"
