// bench/bench_softmax.cpp — normkit_bench_softmax: Softmax, LogSoftmax (forward) and
// CrossEntropyLoss::forward_backward against a copy of the same bytes, one thread.
//   Softmax/fwd/<dtype>/<N>x<C>/t1          read x, write y            bytes = 2 * N * C * sizeof(T)
//   LogSoftmax/fwd/<dtype>/<N>x<C>/t1       same
//   CrossEntropy/fwd_bwd/fp32/<N>x<V>/t1    read logits, write dlogits  bytes = 2 * N * V * 4
//   CrossEntropy/fwd_bwd_confident/...      same, each target's logit 40 above the row's others:
//                                           losses near 0, whose digits take a second sum (of the
//                                           kept exponentials) in run_exp_sum
//   Copy/<dtype>/<N>x<C>/t1                 read one array, write another of the same size
// Names match bench/torch_bench.py's (which ends them in /torch). ratio to copy = copy time / time.
// A separate binary from normkit_bench (its own small main): a softmax change rebuilds one TU.
#include <normkit/normkit.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

namespace {

using Eigen::Index;

template <class T>
std::vector<T> random_logits(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.f, 3.f);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& e : v) e = static_cast<T>(d(gen));
  return v;
}

template <class T>
const char* dtype() {
  return std::is_same_v<T, float> ? "fp32" : "bf16";
}

std::string shape(Index n, Index c) { return std::to_string(n) + "x" + std::to_string(c); }

// A quarter second of untimed calls before a case's first timing: the first case of a process
// sometimes read 1.3x slow for its first few tenths of a second (Softmax fp32 4096x1024: 2.8 ms in
// three 0.1 s repetitions, then 2.14). Done here rather than with MinWarmUpTime, which would add
// "/min_warmup_time:0.250" to every name (torch_bench.py's and older runs' names must match).
template <class F>
void warm_up(const std::string& which, F&& call) {
  static std::set<std::string> warmed;
  if (!warmed.insert(which).second) return;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(250);
  do call();
  while (std::chrono::steady_clock::now() < end);
}

template <class T, class Fn>
void softmax_case(benchmark::State& state, Index N, Index C) {
  const std::vector<T> xs = random_logits<T>(N * C, 1);
  std::vector<T> ys(xs.size());
  Eigen::TensorMap<const Eigen::Tensor<T, 2, Eigen::RowMajor>> x(xs.data(), N, C);
  Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>> y(ys.data(), N, C);
  const Fn fn;
  warm_up(typeid(Fn).name() + shape(N, C), [&] { fn.forward(x, y); });
  for (auto _ : state) {
    fn.forward(x, y);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * N * C * Index(sizeof(T)));
}

template <class T>
void copy_case(benchmark::State& state, Index N, Index C) {
  const std::vector<T> xs = random_logits<T>(N * C, 1);
  std::vector<T> ys(xs.size());
  warm_up(std::string("copy") + dtype<T>() + shape(N, C),
          [&] { std::memcpy(ys.data(), xs.data(), xs.size() * sizeof(T)); });
  for (auto _ : state) {
    std::memcpy(ys.data(), xs.data(), xs.size() * sizeof(T));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * N * C * Index(sizeof(T)));
}

void cross_entropy_case(benchmark::State& state, Index N, Index V, float margin) {
  std::vector<float> xs = random_logits<float>(N * V, 2);
  std::vector<float> ds(xs.size());
  Eigen::TensorMap<const Eigen::Tensor<float, 2, Eigen::RowMajor>> x(xs.data(), N, V);
  Eigen::TensorMap<Eigen::Tensor<float, 2, Eigen::RowMajor>> dx(ds.data(), N, V);
  Eigen::Tensor<std::int64_t, 1> t(N);
  for (Index i = 0; i < N; ++i) {
    t(i) = (i * 7919) % V;
    if (margin > 0) {
      float top = xs[std::size_t(i * V)];
      for (Index c = 1; c < V; ++c) top = std::max(top, xs[std::size_t(i * V + c)]);
      xs[std::size_t(i * V + t(i))] = top + margin;
    }
  }
  const normkit::CrossEntropyLoss<float> ce;
  warm_up("ce" + shape(N, V) + std::to_string(margin), [&] { ce.forward_backward(x, t, dx); });
  for (auto _ : state) {
    benchmark::DoNotOptimize(ce.forward_backward(x, t, dx));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * N * V * Index(sizeof(float)));
}

// Real time (the machine may be shared: CPU time would flatter every case alike, but hide waits).
template <class F>
void reg(const std::string& name, F&& f) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(f))->UseRealTime();
}

const int registered = [] {
  const Index shapes[][2] = {{4096, 1024}, {512, 32000}, {64, 128256}};
  for (const auto& s : shapes) {
    const Index N = s[0], C = s[1];
    reg("Softmax/fwd/fp32/" + shape(N, C) + "/t1",
        [N, C](benchmark::State& st) { softmax_case<float, normkit::Softmax<float>>(st, N, C); });
    reg("LogSoftmax/fwd/fp32/" + shape(N, C) + "/t1",
        [N, C](benchmark::State& st) { softmax_case<float, normkit::LogSoftmax<float>>(st, N, C); });
    reg("Softmax/fwd/bf16/" + shape(N, C) + "/t1",
        [N, C](benchmark::State& st) { softmax_case<Eigen::bfloat16, normkit::Softmax<Eigen::bfloat16>>(st, N, C); });
    reg("Copy/fp32/" + shape(N, C) + "/t1", [N, C](benchmark::State& st) { copy_case<float>(st, N, C); });
    reg("Copy/bf16/" + shape(N, C) + "/t1", [N, C](benchmark::State& st) { copy_case<Eigen::bfloat16>(st, N, C); });
  }
  const Index ce_shapes[][2] = {{2048, 32000}, {512, 128256}};
  for (const auto& s : ce_shapes) {
    const Index N = s[0], V = s[1];
    reg("CrossEntropy/fwd_bwd/fp32/" + shape(N, V) + "/t1",
        [N, V](benchmark::State& st) { cross_entropy_case(st, N, V, 0.f); });
    reg("Copy/fp32/" + shape(N, V) + "/t1", [N, V](benchmark::State& st) { copy_case<float>(st, N, V); });
  }
  reg("CrossEntropy/fwd_bwd_confident/fp32/" + shape(2048, 32000) + "/t1",
      [](benchmark::State& st) { cross_entropy_case(st, 2048, 32000, 40.f); });
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
