// bench/bench_moments.cpp — the Moments/... group: what the overflow/underflow-safe statistics cost.
//
// normkit computes the moments of a row with run_moments (core/groups.hpp): one pass of shifted
// sums (run_one_pass; a second pass when its shift was poor), then a range check (in_range) that
// decides whether the sums may have overflowed or underflowed; only then does it find max|x| and
// run two passes again on data scaled by a power of two (run_two_pass). The group times, over every
// row of one preallocated fp32 buffer of 4096 rows x 768 (3 KiB rows, in L1 once read):
//   Moments/run_one_pass/fp32/4096x768/t1       run_one_pass<float>(row, n, m): no check
//   Moments/run_moments/fp32/4096x768/t1        run_moments<float>(row, n, true): + range check
//   Moments/run_moments/fp32/4096x768x1e30/t1   the same on the rows times 1e30, whose squares
//                                               overflow float: the rescaled path, every row
//   Moments/run_max_abs/fp32/4096x768x1e30/t1   run_max_abs<float>(row, n) alone, the one extra
//                                               sweep of that path besides its two passes
// Bytes per call: rows * n * 4 (the buffer read once), so GB/s compares with the other cases.
// These are internal functions (normkit::core::detail); the group exists to watch their cost.
#if __has_include(<normkit/normkit.hpp>)
#include <normkit/normkit.hpp>  // first: it defines EIGEN_USE_THREADS before the Tensor module
#define NKBENCH_HAVE_NORMKIT 1
#endif

#include "common.hpp"

#if defined(NKBENCH_HAVE_NORMKIT)

namespace nkbench {
namespace {

constexpr Index kRows = 4096, kCols = 768;

enum class Variant { OnePass, Moments, MaxAbs };

void run_rows(benchmark::State& state, Variant v, double scale) {
  const std::size_t n = static_cast<std::size_t>(kRows * kCols);
  const float* x = scale == 1 ? buffers<float>(n).x : scaled_input<float>(n, scale);
  const std::int64_t bytes = static_cast<std::int64_t>(n * sizeof(float));
  auto call = [&] {
    namespace nd = normkit::core::detail;
    for (Index r = 0; r < kRows; ++r) {
      const normkit::core::LoadX<float> row{x + r * kCols};
      if (v == Variant::MaxAbs) {
        float top = normkit::core::run_max_abs<float>(row, kCols);
        benchmark::DoNotOptimize(top);
        continue;
      }
      normkit::core::Moments<float> m;
      if (v == Variant::OnePass) {
        bool shift_ok = nd::run_one_pass<float>(row, kCols, m);
        benchmark::DoNotOptimize(shift_ok);
      } else {
        m = nd::run_moments<float>(row, kCols, /*centered=*/true);
      }
      benchmark::DoNotOptimize(m);
    }
  };
  call();  // warm-up
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, bytes);
}

}  // namespace

void register_moments() {
  const std::string shape = std::to_string(kRows) + "x" + std::to_string(kCols);
  struct Entry {
    const char* fn;
    Variant v;
    double scale;
    const char* suffix;
  };
  for (Entry e :
       {Entry{"run_one_pass", Variant::OnePass, 1, ""}, Entry{"run_moments", Variant::Moments, 1, ""},
        Entry{"run_moments", Variant::Moments, 1e30, "x1e30"}, Entry{"run_max_abs", Variant::MaxAbs, 1e30, "x1e30"}}) {
    const std::string name = std::string("Moments/") + e.fn + "/fp32/" + shape + e.suffix + "/t1";
    configure(benchmark::RegisterBenchmark(name.c_str(), [e](benchmark::State& st) { run_rows(st, e.v, e.scale); }));
  }
}

}  // namespace nkbench

#else  // normkit headers not there yet

namespace nkbench {
void register_moments() {}
}  // namespace nkbench

#endif
