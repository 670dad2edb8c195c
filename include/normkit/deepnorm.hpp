// normkit/deepnorm.hpp — DeepNorm's constants (alpha, beta) for a Post-LN Transformer of a given depth.
//
// DeepNorm (Wang, Ma, Dong, Huang, Zhang and Wei, 2022, "DeepNet: Scaling Transformers to 1,000
// Layers", arXiv:2203.00555; Section 2 "TL;DR for Practitioners", Figure 2, derived in Section 4)
// replaces each sub-layer's residual connection x_{l+1} = LN(x_l + G(x_l)) by
//     x_{l+1} = LN(alpha * x_l + G(x_l))
// and initializes the feed-forward weights and the attention's value and output projections with
// Xavier initialization of gain beta (the query and key projections keep gain 1). With N encoder and
// M decoder layers:
//     encoder-only (BERT-like)   alpha = (2N)^(1/4),                beta = (8N)^(-1/4)
//     decoder-only (GPT-like)    alpha = (2M)^(1/4),                beta = (8M)^(-1/4)
//     encoder-decoder  encoder   alpha = 0.81 (N^4 M)^(1/16),       beta = 0.87 (N^4 M)^(-1/16)
//                      decoder   alpha = (3M)^(1/4),                beta = (12M)^(-1/4)
// torchscale (microsoft/torchscale, the authors' library; torchscale/architecture/encoder.py and
// decoder.py, read 2026-12-03 at commit 0cb96955) agrees with these formulas except in one place. Its
// alphas are the paper's: encoder 0.81 (N^4 M)^(1/16) (encoder-decoder) or (2N)^(1/4), decoder
// (3M)^(1/4) or (2M)^(1/4). Its init divides the fc1/fc2/out_proj/v_proj parameters (biases included)
// of the already-initialized model by a scale: (8N)^(1/4) encoder-only, (8M)^(1/4) decoder-only,
// (12M)^(1/4) decoder of an encoder-decoder -- the paper's betas -- but, for the encoder of an
// encoder-decoder, by (N^4 M)^(1/16) / 1.15, i.e. it multiplies by 1.15 (N^4 M)^(-1/16) where the
// paper's beta is 0.87 (N^4 M)^(-1/16). 1.15 is 1/0.87 (to 0.05%): the paper's beta needs the scale
// (N^4 M)^(1/16) * 1.15 (= / 0.87), the code has / 1.15, so its encoder init is 1.32x (1.15/0.87) the
// paper's. normkit follows the paper (and the contract): beta = 0.87 (N^4 M)^(-1/16).
// Two more differences are choices, not slips: torchscale scales whatever init the layers got (not a
// fresh Xavier of gain beta) and scales the biases too.
//
// This header only computes the constants; the residual add and LayerNorm are the caller's (or
// LayerNorm's fused residual add, where the library offers it). layers < 1 throws
// std::invalid_argument.
//
// Seed document 001 (one of the documents normkit started from, outside this repository; README,
// "Where the seed documents are wrong or ambiguous") describes "Deep Norm" differently: a
// normalization layer inserted after every layer, then the activation, with running mean/variance
// estimates, and code that is a plain MLP with LayerNorm; it gives no alpha or beta. That is not the
// DeepNet method: these functions follow the paper's formulas as the contract states them.
#pragma once

#include <cmath>
#include <string>

#include "errors.hpp"

namespace normkit {

// x_{l+1} = LN(alpha * x_l + G(x_l)); beta: the Xavier gain of the sub-layers' FFN, value and
// output projection weights at initialization.
struct DeepNormScale {
  double alpha;
  double beta;
};

struct DeepNormEncoderDecoder {
  DeepNormScale encoder, decoder;
};

namespace detail {

inline void check_layers(const char* where, const char* what, int layers) {
  if (layers < 1) throw_invalid(where, std::string(what) + " must be >= 1, got " + std::to_string(layers));
}

// alpha = (a L)^(1/4), beta = (b L)^(-1/4).
inline DeepNormScale deepnorm_quartic(double a, double b, int layers) {
  const double l = static_cast<double>(layers);
  return {std::pow(a * l, 0.25), std::pow(b * l, -0.25)};
}

}  // namespace detail

// An encoder-only Transformer of N = layers layers: alpha = (2N)^(1/4), beta = (8N)^(-1/4).
inline DeepNormScale deepnorm_encoder_only(int layers) {
  detail::check_layers("deepnorm_encoder_only", "layers", layers);
  return detail::deepnorm_quartic(2, 8, layers);
}

// A decoder-only Transformer of M = layers layers: alpha = (2M)^(1/4), beta = (8M)^(-1/4).
inline DeepNormScale deepnorm_decoder_only(int layers) {
  detail::check_layers("deepnorm_decoder_only", "layers", layers);
  return detail::deepnorm_quartic(2, 8, layers);
}

// An encoder-decoder Transformer of N = encoder_layers and M = decoder_layers layers:
// encoder alpha = 0.81 (N^4 M)^(1/16), beta = 0.87 (N^4 M)^(-1/16); decoder alpha = (3M)^(1/4),
// beta = (12M)^(-1/4). (N^4 M)^(1/16) is formed as N^(1/4) M^(1/16), without the intermediate
// N^4 M (inexact in double once N^4 M exceeds 2^53).
inline DeepNormEncoderDecoder deepnorm_encoder_decoder(int encoder_layers, int decoder_layers) {
  detail::check_layers("deepnorm_encoder_decoder", "encoder_layers", encoder_layers);
  detail::check_layers("deepnorm_encoder_decoder", "decoder_layers", decoder_layers);
  const double n = static_cast<double>(encoder_layers), m = static_cast<double>(decoder_layers);
  const double root = std::pow(n, 0.25) * std::pow(m, 0.0625);  // (N^4 M)^(1/16)
  return {{0.81 * root, 0.87 / root}, detail::deepnorm_quartic(3, 12, decoder_layers)};
}

}  // namespace normkit
