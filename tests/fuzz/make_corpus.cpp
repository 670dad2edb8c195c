// tests/fuzz/make_corpus.cpp — writes the seed corpus of fuzz_norms (tests/fuzz/corpus/).
//
//   bash scripts/fuzz.sh --make-corpus          (builds this and rewrites tests/fuzz/corpus/)
//
// Every seed is a Header (fuzz_input.hpp) plus an optional tail. Between them they cover each
// functor in float and double, both layouts of x and both for y/dy/dx, every value mode, the
// special eps / momentum / channel_axis values, mismatching shapes and stats, empty dims, and the
// big (thread-pool) and huge (streaming-store) sizes. Deterministic: the same files every time.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_input.hpp"

namespace {

using namespace normkit_fuzz;

struct Seed {
  std::string name;
  Header h;
  std::vector<std::uint8_t> tail;
};

// The byte that decodes to dimension d (fuzz_norms.cpp reads (b + 4) % 18).
std::uint8_t dim(int d) { return std::uint8_t((d + 14) % 18); }

Header make(int functor, bool dbl, std::vector<int> dims, std::uint8_t flags = 0) {
  Header h{};
  h.functor = std::uint8_t(functor);
  h.flags = std::uint8_t(flags | (dbl ? kDouble : 0));
  h.rank = std::uint8_t(dims.size() - 1);
  for (std::size_t i = 0; i < 4; ++i) h.dims[i] = dim(i < dims.size() ? dims[i] : 4);
  h.eps = 16;  // the functor's default eps
  h.stats = 0;
  h.x = Recipe{kOrdinary, 0, 0, 0, 1, 0};
  h.dy = Recipe{kOrdinary, 0, 0, 0, 2, 0};
  return h;
}

const char* fname[3] = {"ln", "rms", "bn"};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::vector<Seed> seeds;
  const auto add = [&](std::string name, const Header& h, std::vector<std::uint8_t> tail = {}) {
    seeds.push_back({std::move(name), h, std::move(tail)});
  };

  // Every functor and layout combination on ordinary values, float and double.
  for (int f = 0; f < 3; ++f)
    for (int l = 0; l < 4; ++l) {
      const bool dbl = l == 1 || l == 2;
      const std::uint8_t flags = std::uint8_t((l & 1 ? kXColMajor : 0) | (l & 2 ? kOutFlip : 0) | (l << kOffsetShift));
      Header h = make(f, dbl, f == 2 ? std::vector<int>{6, 3, 5} : std::vector<int>{3, 5, 9}, flags);
      h.shape = f == 2 ? 0 : std::uint8_t(l % 2);  // LN/RMS: 1 or 2 normalized axes
      add(std::string("basic-") + fname[f] + (dbl ? "-f64" : "-f32") + "-layout" + std::to_string(l), h);
    }

  // Every value mode, for x (dy gets the same mode with another seed).
  const char* modes[8] = {"ordinary", "mixed", "nearconst", "const", "rawbits", "poisoned", "wideexp", "tail"};
  for (int f = 0; f < 3; ++f)
    for (int m = 1; m < 8; ++m) {
      Header h = make(f, m % 2 == 0, f == 2 ? std::vector<int>{8, 4, 3} : std::vector<int>{6, 16},
                      m % 3 ? kXColMajor : 0);
      h.x = Recipe{std::uint8_t(m), 0, 0, std::uint8_t(m == kNearConstant ? 0x42 : 64), std::uint8_t(m), 0};
      h.dy = Recipe{std::uint8_t(m == kFromTail ? kOrdinary : m), 0, 0, 32, std::uint8_t(m + 100), 0};
      std::vector<std::uint8_t> tail;
      if (m == kFromTail)
        for (int i = 0; i < 96; ++i) tail.push_back(std::uint8_t(i * 37 + 128 * (i % 3 == 0)));
      add(std::string("values-") + fname[f] + "-" + modes[m], h, tail);
    }

  // Specials one class at a time (mask), near-constant rows at large offsets.
  const struct {
    const char* name;
    unsigned mask;
  } classes[] = {{"nan", 1u << 2 | 1u << 3},
                 {"inf", 1u << 4 | 1u << 5},
                 {"subnormal", 1u << 6 | 1u << 7 | 1u << 8},
                 {"huge", 1u << 10 | 1u << 11 | 1u << 12},
                 {"offset", 1u << 6 | 1u << 7}};
  for (const auto& k : classes)
    for (int f = 0; f < 3; ++f) {
      Header h = make(f, f == 1, f == 2 ? std::vector<int>{5, 3, 4} : std::vector<int>{4, 12});
      const bool near = std::string(k.name) == "offset";
      h.x = Recipe{std::uint8_t(near ? kNearConstant : kMixed),
                   std::uint8_t(k.mask & 0xff),
                   std::uint8_t(k.mask >> 8),
                   std::uint8_t(near ? 0x22 : 48),
                   7,
                   0};
      add(std::string("special-") + k.name + "-" + fname[f], h);
    }

  // Options.
  const struct {
    const char* name;
    std::uint8_t eps;
  } eps[] = {{"zero", 1}, {"negzero", 2},   {"tiny", 4}, {"denorm", 5},
             {"inf", 10}, {"negative", 11}, {"nan", 12}, {"huge", 15}};
  for (int i = 0; i < 8; ++i) {
    const int f = i % 3;
    Header h = make(f, i % 2, {4, 6});
    h.eps = eps[i].eps;
    h.x = Recipe{kConstant, 0, 0, 40, 3, 0};
    add(std::string("eps-") + eps[i].name + "-" + fname[f], h);
  }
  for (int f = 0; f < 2; ++f) {
    Header h = make(f, f == 1, {3, 2, 8});
    h.options = kOutside | kFlipBias;
    h.x = Recipe{kConstant, 0, 0, 0, 5, 0};
    add(std::string("outside-flipbias-") + fname[f], h);
    h.options = kNoAffine;
    h.params = 0x05;
    add(std::string("noaffine-") + fname[f], h);
    h.options = 0;
    h.params = 0x0a;  // weight and bias with specials
    add(std::string("params-specials-") + fname[f], h);
  }
  {
    const struct {
      const char* name;
      std::uint8_t momentum, axis, steps, options, params;
    } bn[] = {
        {"momentum-nullopt-3steps", 1, 0, 2, 0, 0},
        {"momentum-nan", 5, 0, 0, 0, 0},
        {"momentum-1.5", 7, 0, 0, 0, 0},
        {"momentum-0", 2, 0, 1, 0, 0},
        {"channels-last", 0, 1, 1, 0, 0},
        {"axis-0", 0, 2, 0, 0, 0},
        {"axis-out-of-range", 0, 10, 0, 0, 0},
        {"axis-int64-min", 0, 11, 0, 0, 0},
        {"no-tracking", 0, 0, 1 | 4, kNoTracking, 0},
        {"eval-running-specials", 0, 0, 1 | 8, 0, 0x20},
        {"train-then-eval-toggle", 0, 0, 1 | 8, kToggleMode, 0x10},
    };
    for (const auto& b : bn) {
      Header h = make(2, false, {6, 3, 4, 2});
      h.momentum = b.momentum, h.channel_axis = b.axis, h.steps = b.steps, h.options = b.options, h.params = b.params;
      add(std::string("bn-") + b.name, h);
    }
    // A parameter resized after construction (params bits 6-7 = 3): momentum bits 4-5 pick it,
    // bits 6-7 the new size (0 empty, 1 one less, 2 one more). Must throw shape_error, read nothing.
    const struct {
      const char* name;
      int functor;
      std::uint8_t momentum;
    } resized[] = {{"ln-weight-shorter", 0, 0x40},
                   {"rms-bias-added", 1, 0x50},
                   {"ln-bias-emptied", 0, 0x10},
                   {"bn-running-var-longer", 2, 0xB0},
                   {"bn-weight-emptied", 2, 0x00}};
    for (const auto& r : resized) {
      Header h = r.functor == 2 ? make(2, false, {6, 3, 4, 2}) : make(r.functor, false, {3, 2, 8});
      h.params = 0xC0;
      h.momentum = r.momentum;
      add(std::string("resized-") + r.name, h);
    }
    Header h = make(2, false, {1, 3, 1});  // one value per channel: training throws
    add("bn-one-value-per-channel", h);
    h = make(2, true, {5});  // rank 1
    add("bn-rank1", h);
  }

  // Shapes that do not match.
  for (int f = 0; f < 3; ++f) {
    for (int kind = 5; kind <= 7; ++kind) {
      Header h = make(f, false, {3, 4, 5});
      h.shape = std::uint8_t(kind << 2 | 1);
      h.shape_aux[0] = 1, h.shape_aux[1] = std::uint8_t(kind == 7 ? 2 : 0x35);
      if (f == 2 && kind == 5) continue;
      add(std::string("shape-kind") + std::to_string(kind) + "-" + fname[f], h);
    }
    Header h = make(f, false, {3, 4, 5});
    h.mismatch[0] = 7;
    add(std::string("mismatch-y-") + fname[f], h);
    h.mismatch[0] = 0, h.mismatch[1] = 7 | 1 << 3;
    add(std::string("mismatch-dy-") + fname[f], h);
    h.mismatch[1] = 0, h.mismatch[2] = 7 | 2 << 3 | 2 << 6;
    add(std::string("mismatch-dx-") + fname[f], h);
  }

  for (int f = 0; f < 2; ++f) {
    Header h = make(f, false, {3, 4, 5});
    h.shape = 3;  // 4 normalized axes on a rank-3 x
    add(std::string("shape-rank-too-small-") + fname[f], h);
  }

  // Stats handed to backward.
  for (int s = 8; s < 16; ++s) {
    Header h = make(s % 3, s % 2, s % 3 == 2 ? std::vector<int>{4, 3, 2} : std::vector<int>{4, 3, 5}, kXColMajor);
    h.stats = std::uint8_t(s);
    h.stats_aux = std::uint8_t(s * 5);
    add("stats-mode" + std::to_string(s), h);
  }

  // Empty dims, operator().
  for (int f = 0; f < 3; ++f) {
    Header h = make(f, f == 0, {0, 3, 4}, kCallOperator);
    add(std::string("empty-batch-") + fname[f], h);
    h = make(f, false, {2, 3, 7}, kCallOperator | kXColMajor);
    add(std::string("operator-") + fname[f], h);
  }

  // Sizes the thread pool splits, and outputs large enough to be streamed.
  {
    Header h = make(0, false, {4, 16}, kXColMajor);
    h.size_mode = kBigFirst, h.options = kPool;
    add("big-pool-ln-colmajor", h);
    h = make(1, true, {2, 16}, 0);
    h.size_mode = kBigFirst, h.options = kPool;
    h.x = Recipe{kPoisoned, 0, 0, 16, 9, 0};
    add("big-pool-rms-poisoned", h);
    h = make(2, false, {4, 5, 17}, 0);
    h.size_mode = kBigFirst, h.options = kPool, h.channel_axis = 1;  // channels-last
    add("big-pool-bn-channels-last", h);
    h = make(2, false, {4, 3, 6, 5}, 0);
    h.size_mode = kBigFirst + 1, h.options = kPool;
    add("big-pool-bn-nchw", h);
    h = make(0, false, {8, 16}, 1 << kOffsetShift);
    h.size_mode = kHuge;
    add("huge-ln-stream", h);
  }

  for (const Seed& s : seeds) {
    const std::string path = dir + "/" + s.name;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) {
      std::perror(path.c_str());
      return 1;
    }
    std::fwrite(&s.h, sizeof(Header), 1, f);
    if (!s.tail.empty()) std::fwrite(s.tail.data(), 1, s.tail.size(), f);
    std::fclose(f);
  }
  std::printf("make_corpus: wrote %zu seeds to %s\n", seeds.size(), dir.c_str());
  return 0;
}
