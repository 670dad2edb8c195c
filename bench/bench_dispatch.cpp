// bench/bench_dispatch.cpp — normkit_bench_dispatch: what run-time ISA dispatch (normkit/dispatch.hpp)
// buys a binary built for the x86-64 baseline, and what it costs per call.
//
// LayerNorm forward, fp32, 1 thread, 64x768 (in cache: the call's fixed costs show) and 4096x768.
// Per shape, in one run:
//   Dispatch/<shape>/inline      normkit inlined into this baseline (SSE2) translation unit: what a
//                                distribution's binary runs without dispatch
//   Dispatch/<shape>/<level>     the per-level entry point called directly, every level this CPU has
//   Dispatch/<shape>/picked      normkit::dispatch::pick(...) on every call (CPU check + indirect call)
// "picked" over the best level's direct call is the dispatch overhead; the best level over "inline"
// is what dispatch buys. bytes_per_second counts x read and y written.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "normkit_consumer/forward_rows.hpp"  // tests/consumer: the entry point timed here

namespace {

using normkit::dispatch::Level;
using Fn = Level (*)(const normkit::LayerNorm<float>&, const float*, float*, Eigen::Index);
constexpr Eigen::Index kFeatures = 768;

struct Buffers {
  normkit::LayerNorm<float> ln{kFeatures};
  std::vector<float> x, y;
  explicit Buffers(Eigen::Index rows)
      : x(static_cast<std::size_t>(rows * kFeatures)), y(static_cast<std::size_t>(rows * kFeatures)) {
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 1009) * 0.01f - 5.0f;
    ln.weight().setConstant(1.5f);
    ln.bias().setConstant(0.25f);
  }
};

void set_bytes(benchmark::State& state, Eigen::Index rows) {
  state.SetBytesProcessed(state.iterations() * 2 * rows * kFeatures * static_cast<std::int64_t>(sizeof(float)));
}

void run_inline(benchmark::State& state, Eigen::Index rows) {
  Buffers b(rows);
  using Rows = Eigen::Tensor<float, 2, Eigen::RowMajor>;
  for (auto _ : state) {
    b.ln.forward(Eigen::TensorMap<const Rows>(b.x.data(), rows, kFeatures),
                 Eigen::TensorMap<Rows>(b.y.data(), rows, kFeatures));
    benchmark::DoNotOptimize(b.y.data());
  }
  set_bytes(state, rows);
}

void run_direct(benchmark::State& state, Eigen::Index rows, Fn fn) {
  Buffers b(rows);
  for (auto _ : state) {
    fn(b.ln, b.x.data(), b.y.data(), rows);
    benchmark::DoNotOptimize(b.y.data());
  }
  set_bytes(state, rows);
}

void run_picked(benchmark::State& state, Eigen::Index rows) {
  Buffers b(rows);
  for (auto _ : state) {
    normkit::dispatch::pick(NORMKIT_ISA_VARIANTS(layer_norm_rows))(b.ln, b.x.data(), b.y.data(), rows);
    benchmark::DoNotOptimize(b.y.data());
  }
  set_bytes(state, rows);
}

void register_cases() {
  const Level best = normkit::dispatch::best_level();
  for (Eigen::Index rows : {64, 4096}) {
    const std::string shape = "Dispatch/" + std::to_string(rows) + "x" + std::to_string(kFeatures) + "/";
    benchmark::RegisterBenchmark((shape + "inline").c_str(), run_inline, rows)->UseRealTime();
#if defined(__x86_64__)
    for (Level level : {Level::x86_64, Level::v2, Level::v3, Level::v4}) {
      if (level > best) continue;
      const Fn fn = normkit::dispatch::pick(NORMKIT_ISA_VARIANTS(layer_norm_rows), level);
      benchmark::RegisterBenchmark((shape + normkit::dispatch::level_name(level)).c_str(), run_direct, rows, fn)
          ->UseRealTime();
    }
#endif
    benchmark::RegisterBenchmark((shape + "picked").c_str(), run_picked, rows)->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  register_cases();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
