// bench/bench_normkit.cpp — the normkit functors under test. t1 calls the plain overloads
// (ln.forward(x, y)), t>1 the Eigen::ThreadPoolDevice overloads (ln.forward(dev, x, y)).
// Tensors are TensorMaps over the shared buffers: (rows, features) RowMajor for LayerNorm/RMSNorm
// (ColMajor for the "cm" cases);
// BatchNorm NCHW as RowMajor (N, C, H, W) with channel_axis = 1, channels-last as RowMajor
// (N, H, W, C) with channel_axis = -1, (N, C) with channel_axis = 1.
// Types: fp32 and fp64 run LayerNorm<T> etc. (parameters in T); bf16 runs the mixed-precision
// LayerNorm<Eigen::bfloat16, float> / RMSNorm<Eigen::bfloat16, float> (float weight and bias).
// Cases with an input_scale read x from a separate buffer holding x * scale (scaled_input).
// GroupNorm/InstanceNorm: RowMajor (N, C, H, W) with channel_axis = 1 or (N, H, W, C) with -1; bf16
// runs GroupNorm<bfloat16, float> / InstanceNorm<bfloat16, float>.
#if __has_include(<normkit/normkit.hpp>)
#include <normkit/normkit.hpp>  // first: it defines EIGEN_USE_THREADS before the Tensor module
#define NKBENCH_HAVE_NORMKIT 1
#endif

#include "common.hpp"

#include <type_traits>

#if defined(NKBENCH_HAVE_NORMKIT)

namespace nkbench {
namespace {

template <class T, int R>
using Map = Eigen::TensorMap<Eigen::Tensor<T, R, Eigen::RowMajor>>;

template <class Fn>
void time_loop(benchmark::State& state, const Case& c, Fn&& call) {
  if (warm_up(c.bytes())) call();  // warm-up (first touch of any internal state, pool wake-up)
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, c.bytes());
}

template <class T, int Layout, class Layer>
void run_rows_with(benchmark::State& state, const Case& c, Layer& layer) {
  using Rows = Eigen::Tensor<T, 2, Layout>;
  const Index R = c.rows(), F = c.features();
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  const T* xp = c.input_scale == 1 ? buf.x : scaled_input<T>(static_cast<std::size_t>(c.elements()), c.input_scale);
  Eigen::TensorMap<const Rows> x(xp, R, F);
  Eigen::TensorMap<Rows> y(buf.y, R, F), dy(buf.dy, R, F), dx(buf.dx, R, F);
  fill_random(layer.weight().data(), static_cast<std::size_t>(F), 11, 0.5, 1.5);
  if (layer.bias().size() > 0) fill_random(layer.bias().data(), static_cast<std::size_t>(F), 12, -0.5, 0.5);
  const normkit::NormStats<T> stats = layer.forward(x, y);  // statistics for backward
  if (c.threads == 1) {
    if (c.dir == Dir::Fwd) time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.forward(x, y)); });
    else time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.backward(x, dy, stats, dx)); });
  } else {
    const Eigen::ThreadPoolDevice& dev = pool_device(c.threads);
    if (c.dir == Dir::Fwd) time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.forward(dev, x, y)); });
    else time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.backward(dev, x, dy, stats, dx)); });
  }
}

template <class T, class Layer>
void run_rows_layout(benchmark::State& state, const Case& c, Layer& layer) {
  if (c.col_major) run_rows_with<T, Eigen::ColMajor>(state, c, layer);
  else run_rows_with<T, Eigen::RowMajor>(state, c, layer);
}

template <class T, class P>
void run_rows(benchmark::State& state, const Case c) {
  if (c.op == Op::LayerNorm) {
    normkit::LayerNorm<T, P> layer(c.features());
    run_rows_layout<T>(state, c, layer);
  } else {
    normkit::RMSNorm<T, P> layer(c.features());
    run_rows_layout<T>(state, c, layer);
  }
}

template <class T, int R>
void run_bn_rank(benchmark::State& state, const Case& c, const Eigen::array<Index, static_cast<std::size_t>(R)>& dims,
                 Index channel_axis) {
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  Map<T, R> x(buf.x, dims), y(buf.y, dims), dy(buf.dy, dims), dx(buf.dx, dims);
  normkit::BatchNormOptions opt;
  opt.channel_axis = channel_axis;
  normkit::BatchNorm<T> bn(c.channels(), opt);
  fill_random(bn.weight().data(), static_cast<std::size_t>(c.channels()), 21, 0.5, 1.5);
  fill_random(bn.bias().data(), static_cast<std::size_t>(c.channels()), 22, -0.5, 0.5);
  const normkit::NormStats<T> stats = bn.forward(x, y);  // statistics for backward; running stats for eval
  if (c.dir == Dir::FwdEval) bn.eval();
  if (c.threads == 1) {
    if (c.dir == Dir::Bwd) time_loop(state, c, [&] { benchmark::DoNotOptimize(bn.backward(x, dy, stats, dx)); });
    else time_loop(state, c, [&] { benchmark::DoNotOptimize(bn.forward(x, y)); });
  } else {
    const Eigen::ThreadPoolDevice& dev = pool_device(c.threads);
    if (c.dir == Dir::Bwd) time_loop(state, c, [&] { benchmark::DoNotOptimize(bn.backward(dev, x, dy, stats, dx)); });
    else time_loop(state, c, [&] { benchmark::DoNotOptimize(bn.forward(dev, x, y)); });
  }
}

template <class T>
void run_bn(benchmark::State& state, const Case c) {
  const auto& d = c.dims;
  switch (c.layout) {
    case BnLayout::NCHW: run_bn_rank<T, 4>(state, c, {d[0], d[1], d[2], d[3]}, 1); break;
    case BnLayout::NHWC: run_bn_rank<T, 4>(state, c, {d[0], d[1], d[2], d[3]}, -1); break;
    case BnLayout::NC: run_bn_rank<T, 2>(state, c, {d[0], d[1]}, 1); break;
    case BnLayout::None: break;
  }
}

// GroupNorm (c.groups groups) and InstanceNorm, NCHW (channel_axis 1) or channels-last (-1), affine;
// InstanceNorm tracks running statistics (fwd_train updates them, fwd_eval normalizes with them).
template <class T, class P>
void run_grouped(benchmark::State& state, const Case& c) {
  const auto& d = c.dims;
  const Eigen::array<Index, 4> dims{d[0], d[1], d[2], d[3]};
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(c.elements()));
  Map<T, 4> x(buf.x, dims), y(buf.y, dims), dy(buf.dy, dims), dx(buf.dx, dims);
  const Index axis = c.layout == BnLayout::NHWC ? -1 : 1, C = c.channels();
  const auto time_layer = [&](auto& layer) {
    fill_random(layer.weight().data(), static_cast<std::size_t>(C), 31, 0.5, 1.5);
    fill_random(layer.bias().data(), static_cast<std::size_t>(C), 32, -0.5, 0.5);
    const normkit::NormStats<T> stats = layer.forward(x, y);  // statistics for backward
    if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, normkit::InstanceNorm<T, P>>)
      if (c.dir == Dir::FwdEval) layer.eval();
    if (c.threads == 1) {
      if (c.dir == Dir::Bwd) time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.backward(x, dy, stats, dx)); });
      else time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.forward(x, y)); });
    } else {
      const Eigen::ThreadPoolDevice& dev = pool_device(c.threads);
      if (c.dir == Dir::Bwd)
        time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.backward(dev, x, dy, stats, dx)); });
      else time_loop(state, c, [&] { benchmark::DoNotOptimize(layer.forward(dev, x, y)); });
    }
  };
  if (c.op == Op::GroupNorm) {
    normkit::GroupNorm<T, P> gn(c.groups, C, normkit::GroupNormOptions{1e-5, true, axis});
    time_layer(gn);
  } else {
    normkit::InstanceNormOptions o;
    o.affine = true, o.track_running_stats = true, o.channel_axis = axis;
    normkit::InstanceNorm<T, P> in(C, o);
    time_layer(in);
  }
}

// P: the parameters' type (T, or float beside bfloat16). The harness has no BatchNorm bf16 case.
template <class T, class P = T>
void run(benchmark::State& state, const Case c) {
  try {
    if (c.op == Op::GroupNorm || c.op == Op::InstanceNorm) {
      run_grouped<T, P>(state, c);
    } else if (c.op == Op::BatchNorm) {
      if constexpr (std::is_same_v<T, P>) run_bn<T>(state, c);
      else state.SkipWithError("no mixed-precision BatchNorm case in this harness");
    } else {
      run_rows<T, P>(state, c);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

}  // namespace

bool normkit_available() { return true; }

void register_normkit(const Case& c) {
  configure(benchmark::RegisterBenchmark(c.name("normkit").c_str(), [c](benchmark::State& st) {
    switch (c.dtype) {
      case Dtype::FP32: run<float>(st, c); break;
      case Dtype::FP64: run<double>(st, c); break;
      case Dtype::BF16: run<Eigen::bfloat16, float>(st, c); break;
    }
  }));
}

}  // namespace nkbench

#else  // normkit headers not there yet: baselines only

namespace nkbench {
bool normkit_available() { return false; }
void register_normkit(const Case&) {}
}  // namespace nkbench

#endif
