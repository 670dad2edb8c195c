// tests/fuzz/fuzz_input.hpp — the byte layout of one fuzz input, shared by the fuzz target
// (fuzz_norms.cpp) and the seed-corpus generator (make_corpus.cpp), so that the two cannot drift.
//
// An input is a fixed Header (every field one byte, read with memcpy; a short input reads as if
// padded with zeros, so the all-zero input is a valid, ordinary case) followed by a free-form tail
// that value recipes of mode kFromTail read one byte per element (zeros once it runs out).
// Every field is reduced modulo its number of choices, so any byte value means something.
#pragma once

#include <cstddef>
#include <cstdint>

namespace normkit_fuzz {

enum Functor : std::uint8_t { kLayerNorm = 0, kRMSNorm = 1, kBatchNorm = 2 };

// Header::flags
enum Flags : std::uint8_t {
  kDouble = 1 << 0,        // T = double (else float)
  kXColMajor = 1 << 1,     // x is ColMajor (else RowMajor)
  kOutFlip = 1 << 2,       // y, dy and dx in the other layout than x
                           // bit 3: unused
  kOffsetShift = 4,        // bits 4-5: every buffer starts this many elements (0..3) past an aligned one
  kCallOperator = 1 << 6,  // also call operator()(x)
};

// Header::options
enum Options : std::uint8_t {
  kNoAffine = 1 << 0,    // elementwise_affine / affine off
  kFlipBias = 1 << 1,    // bias the other way than the functor's default (LN on, RMS off)
  kOutside = 1 << 2,     // EpsPlacement::OutsideSqrt (LN/RMS)
  kNoTracking = 1 << 3,  // BatchNorm track_running_stats = false
  kPool = 1 << 4,        // run on the 2-thread Eigen::ThreadPoolDevice
  kToggleMode = 1 << 5,  // BatchNorm: flip train/eval between the last forward and backward
};

// Header::size_mode % 32: small (at most 4096 elements) unless
//   kBigFirst..kBigLast: dims[0] grown to >= 64Ki elements, so that the pool splits the work;
//   kHuge: dims[0] grown to >= 8 MiB of T, so that outputs take the streaming-store path.
enum SizeMode : std::uint8_t { kBigFirst = 28, kBigLast = 30, kHuge = 31 };

// Recipe::mode % 8: how the values of x (or dy) are made. r is a splitmix64 stream seeded from the
// recipe; "special" values are the palette in fuzz_norms.cpp (0, -0, NaN, Inf, subnormals, huge...).
enum ValueMode : std::uint8_t {
  kOrdinary = 0,      // multiples of 1/64 in [-15.6, 15.6]
  kMixed = 1,         // ordinary, with density/256 of them replaced by specials (mask-selected)
  kNearConstant = 2,  // per group: one offset (a special, often huge or tiny) plus ulp-sized or 1e-6 noise
  kConstant = 3,      // per group: one value (ordinary or special)
  kRawBits = 4,       // random bit patterns (any NaN payload, subnormal, ...)
  kPoisoned = 5,      // ordinary, and density/256 of the groups get one NaN or +-Inf
  kWideExponent = 6,  // +-m * 2^e over the whole exponent range, subnormals included
  kFromTail = 7,      // one tail byte per element: < 128 ordinary (b - 64) / 8, else special b - 128
};

struct Recipe {
  std::uint8_t mode;
  std::uint8_t mask_lo, mask_hi;  // which specials (bit i allows palette entries i and i + 16); 0 = all
  std::uint8_t density;
  std::uint8_t seed_lo, seed_hi;
};

struct Header {
  std::uint8_t functor;    // % 3
  std::uint8_t flags;      // Flags
  std::uint8_t rank;       // % 4 + 1
  std::uint8_t dims[4];    // (b + 4) % 18 each; only the first `rank` are used; total capped (fuzz_norms.cpp)
  std::uint8_t size_mode;  // SizeMode
  std::uint8_t shape;      // LN/RMS: bits 0-1 normalized rank - 1; bits 2-4 shape kind (0-4 = x's
                           // trailing dims, 5 one entry off, 6 from shape_aux, 7 a zero or negative
                           // entry, or entries whose product does not fit in Index)
                           // BN: bits 2-4 num_features kind (0-5 = the channel dim, 6 off by some, 7 from shape_aux)
  std::uint8_t shape_aux[2];
  std::uint8_t eps;           // % 32: < 16 picks from the eps palette, else the functor's default
  std::uint8_t options;       // Options
  std::uint8_t momentum;      // % 16, momentum palette
  std::uint8_t channel_axis;  // % 16, axis palette
  std::uint8_t steps;         // BN: bits 0-1 forwards - 1 (3 -> 1), bits 2-4: forward k runs in eval mode
  std::uint8_t params;        // bits 0-1 weight fill, 2-3 bias fill, 4-5 BN running stats fill (0 = defaults)
  std::uint8_t mismatch[3];   // y, dy, dx: % 8 == 7 -> dims differ from x's on axis (b >> 3) % rank
  std::uint8_t stats;         // % 16: what backward gets (StatsMode in fuzz_norms.cpp; < 8 = forward's own)
  std::uint8_t stats_aux;
  Recipe x, dy;
};
static_assert(sizeof(Header) == 34, "Header must stay a plain byte layout");

}  // namespace normkit_fuzz
