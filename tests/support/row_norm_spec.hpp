// The float64 reference's description (nkref::RowNormSpec) of a LayerNorm or RMSNorm configured
// with normkit's options. Kept apart from reference.hpp, which does not include normkit.
#pragma once

#include <normkit/options.hpp>

#include "reference.hpp"

namespace nkref {

template <class Options>
RowNormSpec row_norm_spec(const Options& o, bool rms) {
  RowNormSpec s;
  s.rms = rms;
  s.eps = o.eps;
  s.outside = o.eps_placement == normkit::EpsPlacement::OutsideSqrt;
  s.has_weight = o.elementwise_affine;
  s.has_bias = o.elementwise_affine && o.bias;
  return s;
}

inline RowNormSpec ln_spec(const normkit::LayerNormOptions& o) { return row_norm_spec(o, false); }
inline RowNormSpec rms_spec(const normkit::RMSNormOptions& o) { return row_norm_spec(o, true); }

}  // namespace nkref
