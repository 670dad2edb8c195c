// A consumer library whose public header uses normkit's types: normkit::normkit is then a PUBLIC
// dependency of the library, and must travel with the library's install(EXPORT).
#pragma once

#include <normkit/normkit.hpp>

namespace normkit_consumer {

// Runs worked example 2 of the contract through ln (expected weight 2, bias 1, eps 1e-5), once
// on the calling thread and once on an Eigen thread pool. Prints each mismatch; true when none.
bool check_worked_example(const normkit::LayerNorm<float>& ln);

}  // namespace normkit_consumer
