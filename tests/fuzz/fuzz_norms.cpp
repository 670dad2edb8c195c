// tests/fuzz/fuzz_norms.cpp — libFuzzer target: LayerNorm, RMSNorm and BatchNorm, forward and
// backward, on shapes, options and values made from the fuzz input (byte layout: fuzz_input.hpp).
// Built and run by scripts/fuzz.sh under ASan + UBSan.
//
// Each input picks a functor, float or double, a rank 1..4, a layout for x and (independently) for
// y/dx and for dy, buffers starting 0..3 elements past an aligned address (TensorMaps), dims 0..17
// (or grown so that the thread pool splits the work, or so that outputs are streamed), a
// normalized_shape / num_features that may not match x, options including invalid ones (eps 0,
// negative, NaN; momentum nullopt or outside [0, 1]; channel_axis out of range), parameters and
// values from a palette (0, -0, NaN, +-Inf, subnormals, huge, near-constant groups at large offsets,
// raw bit patterns), y/dy/dx of mismatching dims, and stats for backward that may be of the wrong
// size or hold odd values. It then runs forward (BatchNorm: up to three times, train or eval) and
// backward, serially or on a static 2-thread Eigen::ThreadPoolDevice.
//
// A finding is a sanitizer report, an uncaught exception (anything but std::invalid_argument and
// its normkit::shape_error), or a failed check below (printed with the decoded case, then abort()):
// - Errors as the contract says: a dimension mismatch throws normkit::shape_error, an invalid option
//   std::invalid_argument, a valid call throws nothing; the message starts "normkit::<Functor>".
// - A throwing call writes nothing: y/dx keep their sentinel bytes; BatchNorm's running stats and
//   num_batches_tracked are unchanged. No call writes outside its outputs (guard elements around every
//   buffer) or changes x, dy, weight or bias.
// - Sizes: stats hold one entry per row/channel (RMSNorm's mean is empty); grads are empty when the
//   parameter is absent; an empty input gives zero dweight/dbias of full size; num_batches_tracked
//   counts the non-empty training forwards that track.
// - Values, when the statistics come from the batch (README "Behaviour at the edges"):
//   * a group (a row; a channel for BatchNorm) holding a NaN or Inf gives NaN for every y of it,
//   * every other group is bit-identical to a run where the poisoned groups are zeros,
//   * a constant group (for RMSNorm an all-zero row) gives y == bias exactly and, for moderate dy and
//     weight, finite dx,
//   * an all-finite group gives finite y, given eps >= 1e-30, |weight|, |bias| <= 1e6 and, when
//     centered, |x| <= 3e37 (float) or 1e307 (double) — the magnitudes the README says it handles;
//   * on the thread pool, a case large enough to be split gives the same bits twice.
// The value checks leave out what the documents do not promise: eps below 1e-30 (rstd can overflow
// float), huge weights (rstd * weight can overflow), BatchNorm's eval mode (running statistics).
//
// Environment: NORMKIT_FUZZ_VERBOSE=1 prints every decoded case (for reading a reproducer). To fuzz
// past a known finding: NORMKIT_FUZZ_MAX_ABS_F32 / _F64 lower the |x| bound of the finite-y check
// (see finite_bound), NORMKIT_FUZZ_NO_SHAPE_OVERFLOW=1 stops making normalized_shapes whose product
// overflows Index.

#include <normkit/normkit.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "fuzz_input.hpp"

namespace normkit_fuzz {
namespace {

using Eigen::Index;
using Dims = std::vector<Index>;

constexpr Index kMaxElements = 4096;            // small cases
constexpr Index kBigElements = Index(1) << 17;  // two of normkit's 64Ki-element chunks
constexpr Index kStreamBytes = Index(8) << 20;  // normkit streams outputs of 8 MiB and more
constexpr Index kGuard = 16;                    // guard elements on each side of every buffer
constexpr Index kMaxParams = Index(1) << 22;    // weights of a LayerNorm/RMSNorm
constexpr Index kMaxIndex = std::numeric_limits<Index>::max();
constexpr unsigned char kSentinel = 0xA5;

// The harness's own per-element loops carry no coverage instrumentation: its comparisons would be
// traced once per element (most of the run time on the big cases) and say nothing about normkit.
// noinline: inlined into an instrumented caller, a body would be instrumented after all.
#define HARNESS_LOOP __attribute__((no_sanitize("coverage"), noinline))

// ---------------------------------------------------------------------------------------------
// Palettes

template <class T>
HARNESS_LOOP T special(unsigned i) {
  using L = std::numeric_limits<T>;
  constexpr bool f = std::is_same_v<T, float>;
  switch (i % 32) {
    case 0: return T(0);
    case 1: return -T(0);
    case 2: return L::quiet_NaN();
    case 3: return -L::quiet_NaN();
    case 4: return L::infinity();
    case 5: return -L::infinity();
    case 6: return L::denorm_min();  // 1.4e-45 / 4.9e-324
    case 7: return -L::denorm_min();
    case 8: return L::min() / T(8);  // subnormal (float ~1.5e-39)
    case 9: return L::min();
    case 10: return L::max();
    case 11: return -L::max();
    case 12: return L::max() / T(2);
    case 13: return T(1e20);
    case 14: return T(-1e20);
    case 15: return T(1e30);
    case 16: return T(3e37);
    case 17: return T(-3e37);
    case 18: return T(1e-20);
    case 19: return T(1e-30);
    case 20: return L::epsilon();
    case 21: return T(1) + L::epsilon();
    case 22: return T(1e4);
    case 23: return T(1e6);
    case 24: return L::signaling_NaN();
    case 25: return f ? T(1e-19) : T(1e-160);  // squares underflow
    case 26: return f ? T(1e19) : T(1e160);    // squares overflow
    case 27: return T(-1);
    case 28: return T(1);
    case 29: return T(0.1);
    case 30: return f ? T(3e38) : T(1e300);
    default: return f ? T(1e-40) : T(1e-310);  // subnormal
  }
}

// A palette index allowed by `mask` (bit i allows entries i and i + 16; 0 allows all).
HARNESS_LOOP unsigned pick_special(std::uint64_t r, unsigned mask) {
  unsigned i = unsigned(r % 32);
  if (mask == 0) return i;
  for (int tries = 0; tries < 32 && !(mask >> (i % 16) & 1u); ++tries) i = (i + 1) % 32;
  return i;
}

template <class T>
HARNESS_LOOP T ordinary(std::uint64_t r) {
  return T(double(std::int64_t(r % 2001) - 1000) / 64.0);
}

template <class T>
HARNESS_LOOP T from_byte(std::uint8_t b) {
  return b < 128 ? T(double(int(b) - 64) / 8.0) : special<T>(b - 128u);
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();
const double kEps[16] = {1e-5, 0.0,  -0.0, 1e-12, 1e-300, 4.9e-324, 1e-45, 1e-38,
                         1.0,  1e10, kInf, -1e-5, kNaN,   1e-6,     0.25,  1e300};
const std::optional<double> kMomentum[16] = {0.1,       std::nullopt, 0.0,          1.0,  0.5,    kNaN,
                                             -0.1,      1.5,          kInf,         -0.0, 1e-300, 1.0000000000000002,
                                             -4.9e-324, 0.9,          std::nullopt, 0.1};
const Index kAxis[16] = {
    1, -1, 0, 2, 3, -2, -3, -4, 4, -5, 5, std::numeric_limits<Index>::min(), std::numeric_limits<Index>::max(),
    1, -1, 1};

struct Rng {  // splitmix64
  std::uint64_t s;
  HARNESS_LOOP std::uint64_t operator()() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// ---------------------------------------------------------------------------------------------
// Decoding an input

Index product(const Dims& d) {
  Index p = 1;
  for (Index v : d) p *= v;
  return p;
}

struct Case {
  Header h{};
  const std::uint8_t* tail = nullptr;
  std::size_t tail_size = 0;

  int functor = 0;
  bool dbl = false;
  int rank = 1;
  bool x_col = false, out_flip = false, dy_flip = false, call_op = false;
  Index offset = 0;
  int size_mode = 0;  // 0 small, 1 big, 2 huge
  Dims dims, y_dims, dy_dims, dx_dims;

  Dims nshape;         // LayerNorm / RMSNorm
  Index features = 1;  // BatchNorm num_features

  double eps = 1e-5;
  bool affine = true, bias = true, outside = false, track = true, pool = false, toggle = false;
  std::optional<double> momentum = 0.1;
  Index axis = 1;
  int steps = 1;
  unsigned eval_mask = 0;

  const char* name() const {
    return functor == kLayerNorm ? "LayerNorm" : functor == kRMSNorm ? "RMSNorm" : "BatchNorm";
  }
};

Dims perturb(const Dims& d, std::uint8_t m) {
  if (m % 8 != 7 || d.empty()) return d;
  Dims out = d;
  const std::size_t a = (m >> 3) % d.size();
  switch (m >> 6) {
    case 0: out[a] += 1; break;
    case 1: out[a] = out[a] > 0 ? out[a] - 1 : 2; break;
    case 2: out[a] = out[a] ? 0 : 1; break;
    default: out[a] += 5; break;
  }
  return out;
}

// Whether the product of the entries does not fit in Index.
bool shape_overflows(const Dims& d) {
  Index p = 1;
  for (Index v : d)
    if (__builtin_mul_overflow(p, v, &p)) return true;
  return false;
}

Case decode(const std::uint8_t* data, std::size_t size) {
  Case c;
  const std::size_t n = std::min(size, sizeof(Header));
  std::memcpy(&c.h, data, n);
  c.tail = data + n;
  c.tail_size = size - n;
  const Header& h = c.h;

  c.functor = h.functor % 3;
  c.dbl = h.flags & kDouble;
  c.x_col = h.flags & kXColMajor;
  c.out_flip = h.flags & kOutFlip;
  c.dy_flip = c.out_flip;  // see dispatch_layouts
  c.offset = (h.flags >> kOffsetShift) & 3;
  c.call_op = h.flags & kCallOperator;
  c.rank = 1 + h.rank % 4;
  for (int i = 0; i < c.rank; ++i) c.dims.push_back((h.dims[i] + 4) % 18);  // a zero byte is 4
  while (product(c.dims) > kMaxElements) --*std::max_element(c.dims.begin(), c.dims.end());

  const int sm = h.size_mode % 32;
  c.size_mode = sm == kHuge ? 2 : sm >= kBigFirst && sm <= kBigLast ? 1 : 0;
  if (c.size_mode && product(c.dims) > 0) {
    const Index target = c.size_mode == 1 ? kBigElements : kStreamBytes / Index(c.dbl ? sizeof(double) : sizeof(float));
    const Index rest = product(c.dims) / c.dims[0];
    c.dims[0] = (target + rest - 1) / rest;
  }
  c.y_dims = perturb(c.dims, h.mismatch[0]);
  c.dy_dims = perturb(c.dims, h.mismatch[1]);
  c.dx_dims = perturb(c.dims, h.mismatch[2]);

  c.affine = !(h.options & kNoAffine);
  c.outside = h.options & kOutside;
  c.track = !(h.options & kNoTracking);
  c.pool = h.options & kPool;
  c.toggle = h.options & kToggleMode;
  const bool default_bias = c.functor != kRMSNorm;
  c.bias = (h.options & kFlipBias) ? !default_bias : default_bias;
  c.eps = h.eps % 32 < 16 ? kEps[h.eps % 32] : c.functor == kRMSNorm ? 1e-6 : 1e-5;
  c.momentum = kMomentum[h.momentum % 16];
  c.axis = kAxis[h.channel_axis % 16];
  c.steps = 1 + (h.steps & 3) % 3;
  c.eval_mask = (h.steps >> 2) & 7;

  const int kind = (h.shape >> 2) & 7;
  if (c.functor != kBatchNorm) {
    const int k = 1 + (h.shape & 3);
    c.nshape.resize(std::size_t(k));
    for (int i = 0; i < k; ++i) {
      const int at = c.rank - k + i;
      c.nshape[std::size_t(i)] = at >= 0 ? c.dims[std::size_t(at)] : 1 + (h.shape_aux[0] + i) % 17;
    }
    const std::size_t j = h.shape_aux[0] % std::size_t(k);
    if (kind == 5) {
      c.nshape[j] += 1 + h.shape_aux[1] % 3;
    } else if (kind == 6) {
      for (int i = 0; i < k; ++i) c.nshape[std::size_t(i)] = Index((h.shape_aux[i % 2] >> (4 * (i / 2))) % 16) - 1;
    } else if (kind == 7) {
      const std::size_t j2 = (j + 1) % std::size_t(k);
      switch (h.shape_aux[1] % 4) {
        case 0: c.nshape[j] = 0; break;
        case 1: c.nshape[j] = -c.nshape[j] - 1; break;
        case 2:  // two negative entries: a positive product
          c.nshape[j] = -std::max<Index>(c.nshape[j], 1);
          c.nshape[j2] = -std::max<Index>(c.nshape[j2], 1);
          break;
        default:  // a product beyond Index: 2^32 * 2^32 (wraps to 0, never to a plausible size)
          static const bool skip = std::getenv("NORMKIT_FUZZ_NO_SHAPE_OVERFLOW") != nullptr;
          c.nshape[j] = k >= 2 && !skip ? Index(1) << 32 : 0;
          if (k >= 2 && !skip) c.nshape[j2] = Index(1) << 32;
      }
    }
    // At most kMaxParams weights: a normalized_shape of x's huge dim times padding would be a
    // valid multi-GB layer, and an out-of-memory report instead of a finding. (A product beyond
    // Index stays: it is an invalid option.)
    // Saturating: a zero dim keeps shape_overflows() false while the others may still multiply
    // past Index here (found by the fuzzer: [0, 3, 2^32, 2^32]).
    const auto params = [&] {
      Index p = 1;
      for (Index v : c.nshape)
        if (__builtin_mul_overflow(p, std::max<Index>(std::abs(v), 1), &p)) return kMaxIndex;
      return p;
    };
    while (!shape_overflows(c.nshape) && params() > kMaxParams) {
      Index& big = *std::max_element(c.nshape.begin(), c.nshape.end(),
                                     [](Index a, Index b) { return std::abs(a) < std::abs(b); });
      big /= 2;
    }
  } else {
    const Index r = c.rank;
    const Index ax = c.axis >= -r && c.axis < r ? (c.axis < 0 ? c.axis + r : c.axis) : (r >= 2 ? 1 : 0);
    c.features = c.dims[std::size_t(ax)];
    if (kind == 6) c.features += 1 + h.shape_aux[0] % 3;
    if (kind == 7) c.features = Index(h.shape_aux[0] % 20) - 2;
  }
  return c;
}

std::string dims_text(const Dims& d) {
  std::ostringstream s;
  s << '[';
  for (std::size_t i = 0; i < d.size(); ++i) s << (i ? ", " : "") << d[i];
  s << ']';
  return s.str();
}

constexpr const char* kParamNames[4] = {"weight", "bias", "running_mean", "running_var"};
inline bool resizes_param(const Case& c) { return (c.h.params >> 6 & 3) == 3; }

std::string describe(const Case& c) {
  std::ostringstream s;
  s.precision(17);
  const char* layout[2] = {"RowMajor", "ColMajor"};
  s << "  " << c.name() << '<' << (c.dbl ? "double" : "float") << ">, rank " << c.rank << ", x " << layout[c.x_col]
    << ", y/dy/dx " << layout[c.x_col != c.out_flip] << ", offset " << c.offset << " elements, "
    << (c.pool ? "2-thread pool" : "serial") << ", size mode "
    << (c.size_mode == 2   ? "huge"
        : c.size_mode == 1 ? "big"
                           : "small")
    << "\n  x " << dims_text(c.dims) << ", y " << dims_text(c.y_dims) << ", dy " << dims_text(c.dy_dims) << ", dx "
    << dims_text(c.dx_dims) << "\n  ";
  if (c.functor == kBatchNorm) {
    s << "num_features " << c.features << ", eps " << c.eps << ", momentum ";
    if (c.momentum) s << *c.momentum;
    else s << "nullopt";
    s << ", affine " << c.affine << ", track " << c.track << ", channel_axis " << c.axis << ", " << c.steps
      << " forward(s), eval mask " << c.eval_mask << ", toggle before backward " << c.toggle;
  } else {
    s << "normalized_shape " << dims_text(c.nshape) << ", eps " << c.eps << ", affine " << c.affine << ", bias "
      << c.bias << ", " << (c.outside ? "OutsideSqrt" : "InsideSqrt");
  }
  const auto recipe = [&](const Recipe& r) {
    std::ostringstream t;
    t << "mode " << r.mode % 8 << " mask " << (r.mask_lo | r.mask_hi << 8) << " density " << int(r.density) << " seed "
      << (r.seed_lo | r.seed_hi << 8);
    return t.str();
  };
  s << "\n  params fill " << (c.h.params & 3) << '/' << (c.h.params >> 2 & 3) << '/' << (c.h.params >> 4 & 3);
  if (resizes_param(c))
    s << ", then " << kParamNames[c.h.momentum >> 4 & 3] << "() resized (" << (c.h.momentum >> 6) % 3 << ")";
  s << "\n "
    << ", stats mode " << c.h.stats % 16 << " aux " << int(c.h.stats_aux) << ", operator() " << c.call_op
    << "\n  x values: " << recipe(c.h.x) << "; dy values: " << recipe(c.h.dy) << "; tail " << c.tail_size << " bytes";
  return s.str();
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

[[noreturn]] void fail(const Case& c, const std::string& what) {
  std::fprintf(stderr, "\n==== normkit fuzz: CHECK FAILED: %s\n%s\n", what.c_str(), describe(c).c_str());
  std::fflush(stderr);
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// Expected outcomes

enum class Outcome { Ok, Shape, Invalid };
enum class Expect { Ok, Shape, Invalid, Either };

struct Problems {
  bool shape = false;      // a dimension mismatch: must throw normkit::shape_error
  bool option = false;     // an invalid option: must throw std::invalid_argument (of any kind)
  bool ambiguous = false;  // the contract does not say: anything goes
  Expect expect() const {
    return option ? Expect::Invalid : shape ? Expect::Shape : ambiguous ? Expect::Either : Expect::Ok;
  }
};

template <class F>
Outcome attempt(F&& f, std::string& message) {
  try {
    f();
    return Outcome::Ok;
  } catch (const normkit::shape_error& e) {
    message = e.what();
    return Outcome::Shape;
  } catch (const std::invalid_argument& e) {
    message = e.what();
    return Outcome::Invalid;
  }
  // Anything else propagates: libFuzzer reports it as a crash.
}

void check_outcome(const Case& c, const char* call, Expect e, Outcome o, const std::string& message) {
  const char* names[] = {"no exception", "normkit::shape_error", "std::invalid_argument"};
  const char* wanted = e == Expect::Ok      ? "no exception"
                       : e == Expect::Shape ? "normkit::shape_error"
                                            : "std::invalid_argument";
  const bool good = e == Expect::Either || (e == Expect::Ok && o == Outcome::Ok) ||
                    (e == Expect::Shape && o == Outcome::Shape) || (e == Expect::Invalid && o != Outcome::Ok);
  if (!good)
    fail(c, std::string(call) + ": expected " + wanted + ", got " + names[int(o)] +
                (message.empty() ? std::string() : " (\"" + message + "\")"));
  const std::string prefix = std::string("normkit::") + c.name();
  if (o != Outcome::Ok && message.compare(0, prefix.size(), prefix) != 0)
    fail(c, std::string(call) + ": error message does not start with \"" + prefix + "\": \"" + message + "\"");
}

// ---------------------------------------------------------------------------------------------
// Buffers, coordinates, groups

template <class T>
struct Buffer {
  std::vector<T> store;
  Index offset, n;
  Buffer(Index size, Index off) : store(std::size_t(2 * kGuard + off + size)), offset(off), n(size) {
    std::memset(store.data(), kSentinel, store.size() * sizeof(T));
  }
  T* data() { return store.data() + kGuard + offset; }
  const T* data() const { return store.data() + kGuard + offset; }
  HARNESS_LOOP static bool sentinel(const T* p, Index count) {
    const auto* b = reinterpret_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < std::size_t(count) * sizeof(T); ++i)
      if (b[i] != kSentinel) return false;
    return true;
  }
  bool guards_intact() const { return sentinel(store.data(), kGuard + offset) && sentinel(data() + n, kGuard); }
  bool untouched() const { return sentinel(store.data(), Index(store.size())); }
};

bool same_bits(const void* a, const void* b, std::size_t bytes) { return bytes == 0 || std::memcmp(a, b, bytes) == 0; }

// Linear index of coordinates `c` in a tensor of dims `d`.
HARNESS_LOOP Index linear(const Dims& d, const Dims& c, bool col_major) {
  Index j = 0;
  if (col_major)
    for (std::size_t a = d.size(); a-- > 0;) j = j * d[a] + c[a];
  else
    for (std::size_t a = 0; a < d.size(); ++a) j = j * d[a] + c[a];
  return j;
}

// Calls f(j, coords) for every element of a tensor of dims d, j its linear index in memory order.
template <class F>
HARNESS_LOOP void for_each_element(const Dims& d, bool col_major, F&& f) {
  const Index n = product(d);
  Dims c(d.size(), 0);
  for (Index j = 0; j < n; ++j) {
    f(j, c);
    if (col_major) {
      for (std::size_t a = 0; a < d.size() && ++c[a] == d[a]; ++a) c[a] = 0;
    } else {
      for (std::size_t a = d.size(); a-- > 0 && ++c[a] == d[a];) c[a] = 0;
    }
  }
}

// How x's elements fall into normalized groups, when x's shape is valid for the functor.
struct Groups {
  bool valid = false;
  Index count = 0;
  std::vector<Index> of;     // group of x element j (memory order)
  std::vector<Index> param;  // weight/bias index of x element j
  std::vector<Index> out;    // index of x element j in y/dx (x's dims, the output layout)
  std::vector<Index> dy;     // index of x element j in dy (when dy has x's dims)
};

bool trailing_matches(const Case& c) {
  const std::size_t k = c.nshape.size();
  if (k > c.dims.size()) return false;
  for (std::size_t i = 0; i < k; ++i)
    if (c.dims[c.dims.size() - k + i] != c.nshape[i]) return false;
  return true;
}

bool axis_valid(const Case& c) { return c.axis >= -Index(c.rank) && c.axis < Index(c.rank); }
Index axis_of(const Case& c) { return c.axis < 0 ? c.axis + c.rank : c.axis; }

// Huge cases (8 MiB outputs, there for the streaming stores) skip the per-element maps and with
// them the value checks: they would double the run time of the slowest inputs.
Groups make_groups(const Case& c) {
  Groups g;
  if (c.size_mode == 2) return g;
  const Index n = product(c.dims);
  g.of.resize(std::size_t(n));
  g.param.resize(std::size_t(n));
  const bool out_col = c.x_col != c.out_flip, dy_col = c.x_col != c.dy_flip;
  const bool need_dy = c.dy_dims == c.dims;
  g.out.resize(std::size_t(n));
  if (need_dy) g.dy.resize(std::size_t(n));
  if (c.functor == kBatchNorm) {
    g.valid = c.rank >= 2 && axis_valid(c) && c.dims[std::size_t(axis_of(c))] == c.features;
  } else {
    g.valid = trailing_matches(c);
  }
  const std::size_t k = c.nshape.size();
  const std::size_t lead = c.dims.size() >= k ? c.dims.size() - k : 0;
  const std::size_t ax = c.functor == kBatchNorm && g.valid ? std::size_t(axis_of(c)) : 0;
  g.count = 0;
  for_each_element(c.dims, c.x_col, [&](Index j, const Dims& co) HARNESS_LOOP {
    Index grp = 0, par = 0;
    if (!g.valid) {
      grp = co.back();  // only to shape the values
    } else if (c.functor == kBatchNorm) {
      grp = par = co[ax];
    } else {
      for (std::size_t a = 0; a < lead; ++a) grp = grp * c.dims[a] + co[a];
      for (std::size_t a = lead; a < c.dims.size(); ++a) par = par * c.dims[a] + co[a];
    }
    g.of[std::size_t(j)] = grp;
    g.param[std::size_t(j)] = par;
    g.count = std::max(g.count, grp + 1);
    g.out[std::size_t(j)] = linear(c.dims, co, out_col);
    if (need_dy) g.dy[std::size_t(j)] = linear(c.dims, co, dy_col);
  });
  if (g.valid && c.functor == kBatchNorm) g.count = c.features;
  if (g.valid && c.functor != kBatchNorm)
    g.count = product(Dims(c.dims.begin(), c.dims.begin() + std::ptrdiff_t(lead)));
  return g;
}

// ---------------------------------------------------------------------------------------------
// Values

template <class T>
HARNESS_LOOP void fill_values(T* v, Index n, const Recipe& r, const std::vector<Index>* group, Index groups,
                              const Case& c, std::uint64_t salt) {
  Rng rng{(std::uint64_t(r.seed_hi) << 8 | r.seed_lo) * 0x2545f4914f6cdd1dull + salt};
  const unsigned mask = unsigned(r.mask_lo) | unsigned(r.mask_hi) << 8;
  const auto grp = [&](Index j) HARNESS_LOOP { return group ? (*group)[std::size_t(j)] : Index(0); };
  groups = std::max<Index>(groups, 1);
  switch (r.mode % 8) {
    case kOrdinary:
      for (Index j = 0; j < n; ++j) v[j] = ordinary<T>(rng());
      break;
    case kMixed:
      for (Index j = 0; j < n; ++j) {
        const std::uint64_t u = rng();
        v[j] = (u & 255) < r.density ? special<T>(pick_special(u >> 8, mask)) : ordinary<T>(u >> 16);
      }
      break;
    case kNearConstant: {
      std::vector<T> base(static_cast<std::size_t>(groups));
      const std::uint64_t shared = rng();
      for (auto& b : base) b = special<T>(pick_special(r.density & 1 ? shared : rng(), mask));
      for (Index j = 0; j < n; ++j) {
        const std::uint64_t u = rng();
        const T b = base[std::size_t(grp(j))];
        T x = b;
        if ((u & 255) >= (r.density & 0xF0)) {
          if (r.density & 2) {  // relative noise of about 1e-6
            x = T(double(b) + double(b) * 1e-6 * (double(std::int64_t(u >> 8) % 2001) - 1000) / 1000);
          } else {  // a few ulps
            const int steps = int((u >> 8) % 9) - 4;
            const T to = steps < 0 ? T(0) : std::numeric_limits<T>::infinity();
            for (int s = 0; s < std::abs(steps); ++s) x = std::nextafter(x, to);
          }
        }
        v[j] = x;
      }
      break;
    }
    case kConstant: {
      std::vector<T> value(static_cast<std::size_t>(groups));
      for (auto& b : value) {
        const std::uint64_t u = rng();
        b = (u & 255) < r.density ? special<T>(pick_special(u >> 8, mask)) : ordinary<T>(u >> 16);
      }
      for (Index j = 0; j < n; ++j) v[j] = value[std::size_t(grp(j))];
      break;
    }
    case kRawBits:
      for (Index j = 0; j < n; ++j) {
        const std::uint64_t u = rng();
        std::memcpy(&v[j], &u, sizeof(T));
      }
      break;
    case kPoisoned: {
      for (Index j = 0; j < n; ++j) v[j] = ordinary<T>(rng());
      std::vector<Index> size(std::size_t(groups), 0), target(std::size_t(groups), -1), seen(std::size_t(groups), 0);
      for (Index j = 0; j < n; ++j) ++size[std::size_t(grp(j))];
      for (Index g = 0; g < groups; ++g) {
        const std::uint64_t u = rng();
        if ((u & 255) < r.density && size[std::size_t(g)] > 0)
          target[std::size_t(g)] = Index((u >> 8) % std::uint64_t(size[std::size_t(g)]));
      }
      const T bad[3] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity()};
      for (Index j = 0; j < n; ++j) {
        const std::size_t g = std::size_t(grp(j));
        if (seen[g]++ == target[g]) v[j] = bad[rng() % 3];
      }
      break;
    }
    case kWideExponent: {
      using L = std::numeric_limits<T>;
      const int lo = L::min_exponent - L::digits, hi = L::max_exponent - 1;
      for (Index j = 0; j < n; ++j) {
        const std::uint64_t u = rng();
        const int e = lo + int((u >> 20) % std::uint64_t(hi - lo + 1));
        const T m = T(1) + T(double(u & 0xffff) / 65536.0);
        v[j] = std::ldexp(u >> 19 & 1 ? -m : m, e - 1);
      }
      break;
    }
    default:  // kFromTail
      for (Index j = 0; j < n; ++j) v[j] = std::size_t(j) < c.tail_size ? from_byte<T>(c.tail[j]) : T(0);
      break;
  }
}

// Parameters resized after construction (weight() and the rest are mutable references): params bits
// 6-7 == 3 picks one by momentum bits 4-5 (weight, bias, running_mean, running_var) and a new size by
// bits 6-7 % 3: empty, one less (1 when absent), one more. Every forward and backward must then throw
// shape_error before touching anything (a wrong size used to be read out of bounds).
// Returns whether the size really changed.
template <class T>
bool resize_param(const Case& c, Eigen::Tensor<T, 1>* params[4]) {
  if (!resizes_param(c)) return false;
  Eigen::Tensor<T, 1>* p = params[c.h.momentum >> 4 & 3];
  if (!p) return false;
  const Index old = p->size(), how = (c.h.momentum >> 6) % 3;
  const Index size = how == 0 ? 0 : how == 1 ? std::max<Index>(old - 1, 1) : old + 1;
  Eigen::Tensor<T, 1> resized(size);
  resized.setConstant(T(1));
  *p = resized;
  return size != old;
}

// weight / bias / running statistics: 0 leaves the defaults, 1 ordinary, 2 with specials, 3 wide exponents.
template <class T>
void fill_param(Eigen::Tensor<T, 1>& p, int mode, std::uint64_t seed) {
  if (mode == 0 || p.size() == 0) return;
  Rng rng{seed};
  for (Index i = 0; i < p.size(); ++i) {
    const std::uint64_t u = rng();
    if (mode == 1) p(i) = ordinary<T>(u);
    else if (mode == 2) p(i) = (u & 3) == 0 ? special<T>(unsigned(u >> 8)) : ordinary<T>(u >> 16);
    else
      p(i) = std::ldexp(T(1) + T(double(u & 0xff) / 256.0), int((u >> 8) % 200) - 100) * ((u >> 30 & 1) ? T(-1) : T(1));
  }
}

// The largest |x| for which the finite-y check applies to centered groups: 3e37 (float), 1e307
// (double), or NORMKIT_FUZZ_MAX_ABS_F32 / _F64 from the environment (to fuzz past a known finding).
template <class T>
T finite_bound() {
  static const T bound = [] {
    const bool f = std::is_same_v<T, float>;
    const char* env = std::getenv(f ? "NORMKIT_FUZZ_MAX_ABS_F32" : "NORMKIT_FUZZ_MAX_ABS_F64");
    return env ? T(std::strtod(env, nullptr)) : f ? T(3e37) : T(1e307);
  }();
  return bound;
}

template <class T>
bool moderate(T v) {
  return std::isfinite(v) && std::abs(v) <= T(1e6);
}

template <class T>
bool all_moderate(const Eigen::Tensor<T, 1>& p) {
  for (Index i = 0; i < p.size(); ++i)
    if (!moderate(p(i))) return false;
  return true;
}

template <class T>
std::vector<T> copy_of(const Eigen::Tensor<T, 1>& p) {
  return std::vector<T>(p.data(), p.data() + p.size());
}
template <class T>
bool same(const Eigen::Tensor<T, 1>& p, const std::vector<T>& v) {
  return Index(v.size()) == p.size() && same_bits(p.data(), v.data(), v.size() * sizeof(T));
}

const Eigen::ThreadPoolDevice& pool_device() {
  static Eigen::ThreadPool pool(2);
  static Eigen::ThreadPoolDevice device(&pool, 2);
  return device;
}

// ---------------------------------------------------------------------------------------------
// One case, for a scalar type, rank and layouts

template <class T>
struct GroupInfo {
  bool nonfinite = false, constant = true, zero = true;
  T first{};
  bool any = false;
  T max_abs = 0;
};

template <class T, int R, int LX, int LO, int LD>
class Runner {
  using A = normkit::accum_t<T>;
  using Stats = normkit::NormStats<T>;
  using Grads = normkit::NormGrads<T>;
  using XMap = Eigen::TensorMap<const Eigen::Tensor<T, R, LX>>;
  using OutMap = Eigen::TensorMap<Eigen::Tensor<T, R, LO>>;
  using DyMap = Eigen::TensorMap<const Eigen::Tensor<T, R, LD>>;

 public:
  explicit Runner(const Case& c)
      : c_(c), groups_(make_groups(c)), x_(product(c.dims), c.offset), dy_(product(c.dy_dims), c.offset) {
    fill_values(x_.data(), x_.n, c.h.x, groups_.of.empty() ? nullptr : &groups_.of, groups_.count, c, 0x1234);
    // dy is shaped by x's groups when the dims agree (constant dy rows, poisoned dy rows, ...).
    std::vector<Index> dy_group;
    if (c.dy_dims == c.dims && !groups_.dy.empty()) {
      dy_group.resize(std::size_t(dy_.n));
      for (Index j = 0; j < x_.n; ++j) dy_group[std::size_t(groups_.dy[std::size_t(j)])] = groups_.of[std::size_t(j)];
    }
    fill_values(dy_.data(), dy_.n, c.h.dy, dy_group.empty() ? nullptr : &dy_group, groups_.count, c, 0x5678);
    x_copy_.assign(x_.data(), x_.data() + x_.n);
    dy_copy_.assign(dy_.data(), dy_.data() + dy_.n);
    eps_ok_ = c.eps >= 1e-30;
    bound_ = finite_bound<T>();
  }

  void run() {
    if (c_.functor == kBatchNorm) run_batch_norm();
    else if (c_.functor == kLayerNorm) run_trailing<normkit::LayerNorm<T>, normkit::LayerNormOptions>(true);
    else run_trailing<normkit::RMSNorm<T>, normkit::RMSNormOptions>(false);
  }

 private:
  template <class D>
  static std::array<Index, R> arr(const D& d) {
    std::array<Index, R> a{};
    for (int i = 0; i < R; ++i) a[std::size_t(i)] = d[std::size_t(i)];
    return a;
  }
  XMap x_map(const T* data) const { return XMap(data, arr(c_.dims)); }
  DyMap dy_map() const { return DyMap(dy_.data(), arr(c_.dy_dims)); }

  bool values_checked() const { return !groups_.of.empty(); }

  void check_inputs(const char* call) const {
    if (!x_.guards_intact() || !same_bits(x_.data(), x_copy_.data(), x_copy_.size() * sizeof(T)))
      fail(c_, std::string(call) + " changed x or wrote next to it");
    if (!dy_.guards_intact() || !same_bits(dy_.data(), dy_copy_.data(), dy_copy_.size() * sizeof(T)))
      fail(c_, std::string(call) + " changed dy or wrote next to it");
  }
  void check_output(const char* call, const Buffer<T>& out, Outcome o, const char* what) const {
    if (o != Outcome::Ok && !out.untouched()) fail(c_, std::string(call) + " threw but wrote to " + what);
    if (!out.guards_intact()) fail(c_, std::string(call) + " wrote outside " + what);
  }

  HARNESS_LOOP std::vector<GroupInfo<T>> group_info(const T* x) const {
    std::vector<GroupInfo<T>> info(std::size_t(groups_.count));
    for (Index j = 0; j < x_.n; ++j) {
      GroupInfo<T>& g = info[std::size_t(groups_.of[std::size_t(j)])];
      const T v = x[j];
      if (!std::isfinite(v)) g.nonfinite = true;
      else g.max_abs = std::max(g.max_abs, std::abs(v));
      if (v != T(0)) g.zero = false;
      if (!g.any) g.first = v, g.any = true;
      else if (!(v == g.first)) g.constant = false;
    }
    for (auto& g : info)
      if (g.nonfinite) g.constant = g.zero = false;
    return info;
  }

  // The value checks of forward with batch statistics. `w_ok(g)`: weight and bias moderate for group g.
  template <class Bias, class WOk>
  HARNESS_LOOP void check_forward_values(const Buffer<T>& y, bool centered, Bias&& bias_of, WOk&& w_ok,
                                         const std::vector<GroupInfo<T>>& info) const {
    const T* yd = y.data();
    for (Index j = 0; j < x_.n; ++j) {
      const Index g = groups_.of[std::size_t(j)], p = groups_.param[std::size_t(j)];
      const GroupInfo<T>& gi = info[std::size_t(g)];
      const T yv = yd[groups_.out[std::size_t(j)]];
      if (gi.nonfinite) {
        if (!std::isnan(yv))
          fail(c_, "forward: group " + std::to_string(g) + " holds a NaN or Inf but y is not NaN everywhere in it");
      } else if ((centered ? gi.constant : gi.zero) && eps_ok_ && w_ok(g)) {
        if (!(yv == bias_of(p)))
          fail(c_, "forward: constant group " + std::to_string(g) + " (x = " + num(double(gi.first)) +
                       ") gives y = " + num(double(yv)) + " instead of bias " + num(double(bias_of(p))));
      } else if (eps_ok_ && w_ok(g) && (!centered || gi.max_abs <= bound_)) {
        if (!std::isfinite(yv))
          fail(c_, "forward: all-finite group " + std::to_string(g) + " (max |x| " + num(double(gi.max_abs)) +
                       ") gives non-finite y " + num(double(yv)));
      }
    }
  }

  // x with its poisoned groups zeroed, for the isolation check; empty when there is nothing to check.
  HARNESS_LOOP std::vector<T> sanitized(const std::vector<GroupInfo<T>>& info) const {
    bool poisoned = false, clean = false;
    for (const auto& g : info) (g.nonfinite ? poisoned : clean) = true;
    if (!poisoned || !clean) return {};
    std::vector<T> x = x_copy_;
    for (Index j = 0; j < x_.n; ++j)
      if (info[std::size_t(groups_.of[std::size_t(j)])].nonfinite) x[std::size_t(j)] = T(0);
    return x;
  }

  HARNESS_LOOP void check_isolation(const Buffer<T>& y, const Buffer<T>& y2,
                                    const std::vector<GroupInfo<T>>& info) const {
    for (Index j = 0; j < x_.n; ++j) {
      const Index g = groups_.of[std::size_t(j)];
      if (info[std::size_t(g)].nonfinite) continue;
      const Index o = groups_.out[std::size_t(j)];
      if (!same_bits(y.data() + o, y2.data() + o, sizeof(T)))
        fail(c_, "forward: group " + std::to_string(g) + " changes when another group holds a NaN/Inf (" +
                     num(double(y.data()[o])) + " vs " + num(double(y2.data()[o])) + ")");
    }
  }

  // Constant groups (for RMSNorm all-zero rows) give finite dx for moderate dy and weight.
  HARNESS_LOOP void check_backward_values(const Buffer<T>& dx, bool centered, bool weights_ok_all,
                                          const std::vector<bool>* channel_ok,
                                          const std::vector<GroupInfo<T>>& info) const {
    if (groups_.dy.empty() || !(c_.eps >= 1e-12)) return;
    std::vector<char> dy_ok(std::size_t(groups_.count), 1);
    for (Index j = 0; j < x_.n; ++j)
      if (!moderate(dy_.data()[groups_.dy[std::size_t(j)]])) dy_ok[std::size_t(groups_.of[std::size_t(j)])] = 0;
    // dx of a group depends on that group's dy and on the weights it uses (LayerNorm/RMSNorm: all
    // of them, so weights_ok_all; BatchNorm: its channel's).
    for (Index j = 0; j < x_.n; ++j) {
      const Index g = groups_.of[std::size_t(j)];
      const GroupInfo<T>& gi = info[std::size_t(g)];
      if (!(centered ? gi.constant : gi.zero) || !dy_ok[std::size_t(g)]) continue;
      if (channel_ok ? !(*channel_ok)[std::size_t(g)] : !weights_ok_all) continue;
      const T v = dx.data()[groups_.out[std::size_t(j)]];
      if (!std::isfinite(v))
        fail(c_, "backward: constant group " + std::to_string(g) + " gives non-finite dx " + num(double(v)));
    }
  }

  // Backward's stats: the forward's, or altered per Header::stats.
  Stats stats_for_backward(const Stats& s, bool& pristine) const {
    Stats t = s;
    pristine = false;
    const int mode = c_.h.stats % 16;
    const T odd = special<T>(c_.h.stats_aux);
    const auto grow = [](Eigen::Tensor<A, 1>& v, Index size, A fill) {
      Eigen::Tensor<A, 1> n(size);
      for (Index i = 0; i < size; ++i) n(i) = i < v.size() ? v(i) : fill;
      v = n;
    };
    switch (mode) {
      case 8: grow(t.rstd, t.rstd.size() + 1, A(1)); break;
      case 9: grow(t.rstd, t.rstd.size() > 0 ? t.rstd.size() - 1 : 2, A(1)); break;
      case 10:
        grow(t.mean, c_.functor == kRMSNorm ? std::max<Index>(t.rstd.size(), 1) : t.mean.size() + 1, A(0));
        break;
      case 11:
        t.mean_lo = Eigen::Tensor<A, 1>();
        pristine = true;
        break;
      case 12: grow(t.mean_lo, t.mean_lo.size() + 1, A(0)); break;
      case 13:
        for (Index i = 0; i < t.rstd.size(); ++i) t.rstd(i) = A(special<T>(c_.h.stats_aux + unsigned(i)));
        for (Index i = 0; i < t.mean.size(); ++i) t.mean(i) = A(odd);
        break;
      case 14: t = Stats{}; break;
      case 15:
        for (Index i = 0; i < t.mean_lo.size(); ++i) t.mean_lo(i) = A(odd);
        break;
      default: pristine = true; break;
    }
    return t;
  }

  // ----- LayerNorm / RMSNorm

  template <class Norm, class Options>
  void run_trailing(bool centered) {
    Options opt;
    opt.eps = c_.eps;
    opt.elementwise_affine = c_.affine;
    opt.bias = c_.bias;
    opt.eps_placement = c_.outside ? normkit::EpsPlacement::OutsideSqrt : normkit::EpsPlacement::InsideSqrt;

    Problems ctor;
    bool zero = false, negative = false;
    for (Index v : c_.nshape) zero |= v == 0, negative |= v < 0;
    // A normalized_shape whose product does not fit in Index cannot be a layer: it must be refused
    // as an invalid option (not wrap around, not reach an allocation).
    ctor.option = !(c_.eps >= 0) || zero || shape_overflows(c_.nshape);
    ctor.ambiguous = negative;  // the contract names zero-sized, not negative, dimensions
    std::optional<Norm> fn;
    std::string msg;
    Outcome o = attempt(
        [&] {
      if (c_.nshape.size() == 1 && c_.h.shape_aux[1] & 1) fn.emplace(c_.nshape[0], opt);
      else fn.emplace(c_.nshape, opt);
        },
        msg);
    check_outcome(c_, "constructor", ctor.expect(), o, msg);
    if (!fn) return;

    const Index features = product(c_.nshape);
    const Index want_w = c_.affine ? features : 0, want_b = c_.affine && c_.bias ? features : 0;
    if (fn->weight().size() != want_w || fn->bias().size() != want_b)
      fail(c_, "constructor: weight/bias of the wrong size");
    fill_param(fn->weight(), c_.h.params & 3, 11);
    fill_param(fn->bias(), c_.h.params >> 2 & 3, 12);
    Eigen::Tensor<T, 1>* resizable[4] = {&fn->weight(), &fn->bias(), nullptr, nullptr};
    const bool resized = resize_param(c_, resizable);
    const std::vector<T> w0 = copy_of(fn->weight()), b0 = copy_of(fn->bias());
    const auto params_unchanged = [&](const char* call) {
      if (!same(fn->weight(), w0) || !same(fn->bias(), b0)) fail(c_, std::string(call) + " changed weight or bias");
    };

    const bool x_ok = trailing_matches(c_);
    const Index rows = x_ok ? product(Dims(c_.dims.begin(), c_.dims.end() - std::ptrdiff_t(c_.nshape.size()))) : 0;

    // forward
    const auto forward = [&](const T* x, Buffer<T>& y) {
      OutMap ym(y.data(), arr(c_.y_dims));
      return c_.pool ? fn->forward(pool_device(), x_map(x), std::move(ym)) : fn->forward(x_map(x), std::move(ym));
    };
    Problems fp;
    fp.shape = !x_ok || c_.y_dims != c_.dims || resized;
    Buffer<T> y(product(c_.y_dims), c_.offset);
    Stats stats;
    msg.clear();
    o = attempt([&] { stats = forward(x_.data(), y); }, msg);
    check_outcome(c_, "forward", fp.expect(), o, msg);
    check_output("forward", y, o, "y");
    check_inputs("forward");
    params_unchanged("forward");

    if (o == Outcome::Ok) {
      if (stats.rstd.size() != rows || stats.mean.size() != (centered ? rows : 0))
        fail(c_, "forward: stats of the wrong size (rstd " + std::to_string(stats.rstd.size()) + ", mean " +
                     std::to_string(stats.mean.size()) + ", rows " + std::to_string(rows) + ")");
    }
    if (o == Outcome::Ok && values_checked()) {
      const auto info = group_info(x_.data());
      const bool w_ok = all_moderate(fn->weight()) && all_moderate(fn->bias());
      const Eigen::Tensor<T, 1>& bt = fn->bias();
      check_forward_values(
          y, centered, [&](Index p) HARNESS_LOOP { return bt.size() ? bt(p) : T(0); },
          [&](Index) HARNESS_LOOP { return w_ok; }, info);
      const std::vector<T> xs = sanitized(info);
      if (!xs.empty()) {
        Buffer<T> y2(y.n, c_.offset);
        forward(xs.data(), y2);
        check_isolation(y, y2, info);
      }
      if (c_.pool && c_.size_mode == 1) {
        Buffer<T> y3(y.n, c_.offset);
        forward(x_.data(), y3);
        if (!same_bits(y.data(), y3.data(), std::size_t(y.n) * sizeof(T)))
          fail(c_, "forward on the pool: two runs differ");
      }
    }

    if (c_.call_op) {
      Problems op;
      op.shape = !x_ok || resized;
      msg.clear();
      o = attempt(
          [&] {
        const auto out = (*fn)(x_map(x_.data()));
        for (int i = 0; i < R; ++i)
          if (out.dimension(std::size_t(i)) != c_.dims[std::size_t(i)])
            fail(c_, "operator(): result of the wrong dimensions");
          },
          msg);
      check_outcome(c_, "operator()", op.expect(), o, msg);
      check_inputs("operator()");
    }

    // backward
    bool pristine = false;
    const Stats bs = stats_for_backward(stats, pristine);
    Problems bp;
    bp.shape = resized || !x_ok || c_.dy_dims != c_.dims || c_.dx_dims != c_.dims || bs.rstd.size() != rows ||
               (centered && bs.mean.size() != rows) || (bs.mean_lo.size() != 0 && bs.mean_lo.size() != rows);
    bp.ambiguous = !centered && bs.mean.size() != 0;  // RMSNorm given a mean: the contract does not say
    Buffer<T> dx(product(c_.dx_dims), c_.offset);
    Grads grads;
    msg.clear();
    o = attempt(
        [&] {
      OutMap dxm(dx.data(), arr(c_.dx_dims));
      grads = c_.pool ? fn->backward(pool_device(), x_map(x_.data()), dy_map(), bs, std::move(dxm))
                      : fn->backward(x_map(x_.data()), dy_map(), bs, std::move(dxm));
        },
        msg);
    check_outcome(c_, "backward", bp.expect(), o, msg);
    check_output("backward", dx, o, "dx");
    check_inputs("backward");
    params_unchanged("backward");
    if (o != Outcome::Ok) return;
    if (grads.weight.size() != want_w || grads.bias.size() != want_b) fail(c_, "backward: grads of the wrong size");
    if (rows == 0) {
      for (Index i = 0; i < grads.weight.size(); ++i)
        if (!(grads.weight(i) == T(0))) fail(c_, "backward of 0 rows: dweight not zero");
      for (Index i = 0; i < grads.bias.size(); ++i)
        if (!(grads.bias(i) == T(0))) fail(c_, "backward of 0 rows: dbias not zero");
    }
    if (pristine && values_checked()) {
      const auto info = group_info(x_.data());
      check_backward_values(dx, centered, all_moderate(fn->weight()), nullptr, info);
    }
  }

  // ----- BatchNorm

  void run_batch_norm() {
    normkit::BatchNormOptions opt;
    opt.eps = c_.eps;
    opt.momentum = c_.momentum;
    opt.affine = c_.affine;
    opt.track_running_stats = c_.track;
    opt.channel_axis = c_.axis;
    Problems ctor;
    ctor.option = c_.features < 1 || !(c_.eps >= 0) || (c_.momentum && !(*c_.momentum >= 0 && *c_.momentum <= 1));
    std::optional<normkit::BatchNorm<T>> bn;
    std::string msg;
    Outcome o = attempt([&] { bn.emplace(c_.features, opt); }, msg);
    check_outcome(c_, "constructor", ctor.expect(), o, msg);
    if (!bn) return;
    if (!bn->training()) fail(c_, "BatchNorm does not start in training mode");
    const Index C = c_.features;
    if (bn->weight().size() != (c_.affine ? C : 0) || bn->bias().size() != (c_.affine ? C : 0) ||
        bn->running_mean().size() != (c_.track ? C : 0) || bn->running_var().size() != (c_.track ? C : 0))
      fail(c_, "constructor: parameters or running stats of the wrong size");
    fill_param(bn->weight(), c_.h.params & 3, 21);
    fill_param(bn->bias(), c_.h.params >> 2 & 3, 22);
    fill_param(bn->running_mean(), c_.h.params >> 4 & 3, 23);
    fill_param(bn->running_var(), c_.h.params >> 4 & 3, 24);
    std::vector<bool> channel_ok(static_cast<std::size_t>(C));
    for (Index ch = 0; ch < C; ++ch)
      channel_ok[std::size_t(ch)] = (!c_.affine || (moderate(bn->weight()(ch)) && moderate(bn->bias()(ch))));
    Eigen::Tensor<T, 1>* resizable[4] = {&bn->weight(), &bn->bias(), &bn->running_mean(), &bn->running_var()};
    const bool resized = resize_param(c_, resizable);
    const std::vector<T> w0 = copy_of(bn->weight()), b0 = copy_of(bn->bias());
    const auto params_unchanged = [&](const char* call) {
      if (!same(bn->weight(), w0) || !same(bn->bias(), b0)) fail(c_, std::string(call) + " changed weight or bias");
    };

    const bool axis_ok = axis_valid(c_);
    const bool shape_ok = c_.rank >= 2 && axis_ok && c_.dims[std::size_t(axis_of(c_))] == C;
    Index per_channel = 0;  // values per channel
    if (axis_ok) {
      per_channel = 1;
      for (int a = 0; a < c_.rank; ++a)
        if (a != axis_of(c_)) per_channel *= c_.dims[std::size_t(a)];
    }
    const auto problems = [&](const Dims& out_dims, bool batch) {
      Problems p;
      p.shape = c_.rank < 2 || (axis_ok && c_.dims[std::size_t(axis_of(c_))] != C) || out_dims != c_.dims || resized;
      p.option = !axis_ok || (batch && per_channel == 1);
      return p;
    };
    const auto forward = [&](normkit::BatchNorm<T>& f, const T* x, Buffer<T>& y) {
      OutMap ym(y.data(), arr(c_.y_dims));
      return c_.pool ? f.forward(pool_device(), x_map(x), std::move(ym)) : f.forward(x_map(x), std::move(ym));
    };

    Stats stats;
    bool stats_from_batch = false;
    for (int step = 0; step < c_.steps; ++step) {
      bn->train(!(c_.eval_mask >> step & 1));
      const bool batch = bn->training() || !c_.track;
      const normkit::BatchNorm<T> before = *bn;
      Buffer<T> y(product(c_.y_dims), c_.offset);
      msg.clear();
      o = attempt([&] { stats = forward(*bn, x_.data(), y); }, msg);
      check_outcome(c_, "forward", problems(c_.y_dims, batch).expect(), o, msg);
      check_output("forward", y, o, "y");
      check_inputs("forward");
      params_unchanged("forward");
      const bool counts = o == Outcome::Ok && bn->training() && c_.track && per_channel > 0;
      if (bn->num_batches_tracked() != before.num_batches_tracked() + (counts ? 1 : 0))
        fail(c_, "forward: num_batches_tracked " + std::to_string(bn->num_batches_tracked()) + " after " +
                     std::to_string(before.num_batches_tracked()));
      if (!counts && (!same(bn->running_mean(), copy_of(before.running_mean())) ||
                      !same(bn->running_var(), copy_of(before.running_var()))))
        fail(c_, "forward: running stats changed by a call that must not change them");
      stats_from_batch = o == Outcome::Ok && batch;
      if (o != Outcome::Ok) continue;
      if (stats.mean.size() != C || stats.rstd.size() != C) fail(c_, "forward: stats of the wrong size");
      if (!batch || !shape_ok || !values_checked()) continue;
      const auto info = group_info(x_.data());
      const Eigen::Tensor<T, 1>& bt = bn->bias();
      check_forward_values(
          y, true, [&](Index p) HARNESS_LOOP { return bt.size() ? bt(p) : T(0); },
          [&](Index g) HARNESS_LOOP { return bool(channel_ok[std::size_t(g)]); }, info);
      const std::vector<T> xs = sanitized(info);
      if (!xs.empty()) {
        normkit::BatchNorm<T> again = before;
        Buffer<T> y2(y.n, c_.offset);
        forward(again, xs.data(), y2);
        check_isolation(y, y2, info);
      }
      if (c_.pool && c_.size_mode == 1) {
        normkit::BatchNorm<T> again = before;
        Buffer<T> y3(y.n, c_.offset);
        forward(again, x_.data(), y3);
        if (!same_bits(y.data(), y3.data(), std::size_t(y.n) * sizeof(T)))
          fail(c_, "forward on the pool: two runs differ");
      }
    }

    if (c_.call_op) {
      const bool batch = bn->training() || !c_.track;
      const std::int64_t count = bn->num_batches_tracked();
      msg.clear();
      o = attempt([&] { (void)(*bn)(x_map(x_.data())); }, msg);
      check_outcome(c_, "operator()", problems(c_.dims, batch).expect(), o, msg);
      check_inputs("operator()");
      const bool counts = o == Outcome::Ok && bn->training() && c_.track && per_channel > 0;
      if (bn->num_batches_tracked() != count + (counts ? 1 : 0)) fail(c_, "operator(): num_batches_tracked wrong");
    }
    if (c_.toggle) bn->train(!bn->training());

    bool pristine = false;
    const Stats bs = stats_for_backward(stats, pristine);
    Problems bp;
    bp.shape = resized || c_.rank < 2 || (axis_ok && c_.dims[std::size_t(axis_of(c_))] != C) || c_.dy_dims != c_.dims ||
               c_.dx_dims != c_.dims || bs.mean.size() != C || bs.rstd.size() != C ||
               (bs.mean_lo.size() != 0 && bs.mean_lo.size() != C);
    bp.option = !axis_ok;
    Buffer<T> dx(product(c_.dx_dims), c_.offset);
    Grads grads;
    const std::vector<T> rm = copy_of(bn->running_mean()), rv = copy_of(bn->running_var());
    msg.clear();
    o = attempt(
        [&] {
      OutMap dxm(dx.data(), arr(c_.dx_dims));
      grads = c_.pool ? bn->backward(pool_device(), x_map(x_.data()), dy_map(), bs, std::move(dxm))
                      : bn->backward(x_map(x_.data()), dy_map(), bs, std::move(dxm));
        },
        msg);
    check_outcome(c_, "backward", bp.expect(), o, msg);
    check_output("backward", dx, o, "dx");
    check_inputs("backward");
    params_unchanged("backward");
    if (!same(bn->running_mean(), rm) || !same(bn->running_var(), rv)) fail(c_, "backward changed the running stats");
    if (o != Outcome::Ok) return;
    if (grads.weight.size() != (c_.affine ? C : 0) || grads.bias.size() != (c_.affine ? C : 0))
      fail(c_, "backward: grads of the wrong size");
    if (x_.n == 0) {
      for (Index i = 0; i < grads.weight.size(); ++i)
        if (!(grads.weight(i) == T(0)) || !(grads.bias(i) == T(0)))
          fail(c_, "backward of an empty batch: grads not zero");
    }
    if (pristine && stats_from_batch && shape_ok && values_checked()) {
      const auto info = group_info(x_.data());
      check_backward_values(dx, true, true, &channel_ok, info);
    }
  }

  const Case& c_;
  Groups groups_;
  Buffer<T> x_, dy_;
  std::vector<T> x_copy_, dy_copy_;
  bool eps_ok_ = false;
  T bound_{};
};

template <class T, int R>
void dispatch_layouts(const Case& c) {
  // dy follows y/dx: each of normkit's two conversions (an input, an output in another layout
  // than x) is then covered without doubling the instantiations (and the build time).
  constexpr int RM = Eigen::RowMajor, CM = Eigen::ColMajor;
  switch ((c.x_col ? 2 : 0) | (c.out_flip ? 1 : 0)) {
    case 0: Runner<T, R, RM, RM, RM>(c).run(); break;
    case 1: Runner<T, R, RM, CM, CM>(c).run(); break;
    case 2: Runner<T, R, CM, CM, CM>(c).run(); break;
    default: Runner<T, R, CM, RM, RM>(c).run(); break;
  }
}

template <class T>
void dispatch_rank(const Case& c) {
  switch (c.rank) {
    case 1: dispatch_layouts<T, 1>(c); break;
    case 2: dispatch_layouts<T, 2>(c); break;
    case 3: dispatch_layouts<T, 3>(c); break;
    default: dispatch_layouts<T, 4>(c); break;
  }
}

}  // namespace
}  // namespace normkit_fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace normkit_fuzz;
  const Case c = decode(data, size);
  static const bool verbose = std::getenv("NORMKIT_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "normkit fuzz case:\n%s\n", describe(c).c_str());
  if (c.dbl) dispatch_rank<double>(c);
  else dispatch_rank<float>(c);
  return 0;
}
