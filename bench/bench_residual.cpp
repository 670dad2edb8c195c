// bench/bench_residual.cpp — the residual add + norm (LayerNorm/RMSNorm forward_add, backward_add)
// next to what it replaces and to the copies that move the same bytes. One thread.
//
// Names (the layout of main.cpp, so report.py files them with the other cases):
//   <Op>/fwd_add/<dtype>/<shape>/t1/normkit   ln.forward_add(x, r, h, y)
//   <Op>/fwd_add/<dtype>/<shape>/t1/unfused   h = x + r (an Eigen tensor expression), then ln.forward(h, y)
//   <Op>/bwd_add/<dtype>/<shape>/t1/normkit   ln.backward_add(h, dy, dh, stats, dx)
//   <Op>/bwd_add/<dtype>/<shape>/t1/unfused   ln.backward(h, dy, stats, dx), then dx = dx + dh (Eigen)
//   Copy/r2w2/<dtype>/<shape>/t1/<loop|nt>    read two arrays, write two (h = a + b, y = a)
//   Copy/r3w1/<dtype>/<shape>/t1/<loop|nt>    read three arrays, write one (dx = a + b + c)
// Bytes per call: four arrays of the case's elements (fwd_add: x, r read, h, y written; bwd_add: h,
// dy, dh read, dx written) for every implementation, the unfused ones included: their GB/s is the
// useful traffic per second (they move more: the unfused forward reads h back, the unfused backward
// reads and writes dx again). Parameters and statistics are not counted.
// Arrays: the shared buffers of main.cpp (x, y, dy, dx), so nothing more is allocated:
//   fwd_add x = x, r = dy, h = dx, y = y;  bwd_add h = x, dy = dy, dh = y, dx = dx.
// bfloat16 runs LayerNorm<bfloat16, float> / RMSNorm<bfloat16, float>, as bench_normkit.cpp.
// The unfused baselines' Eigen tensor expressions (h = x + r over bfloat16) trip GCC 12's false
// -W(maybe-)uninitialized inside avx512fintrin.h (GCC bug 105593), as in bench_eigen.cpp: silenced for
// this file only (bench_normkit.cpp still builds the normkit headers with the full warning set).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if __has_include(<normkit/normkit.hpp>)
#include <normkit/normkit.hpp>  // first: it defines EIGEN_USE_THREADS before the Tensor module
#define NKBENCH_HAVE_NORMKIT 1
#endif

#include "common.hpp"

#include <immintrin.h>

#include <string>
#include <vector>

namespace nkbench {
namespace {

// The copies work on floats over the same bytes (a bf16 case moves half the floats).
void r2w2_loop(const float* __restrict a, const float* __restrict b, float* __restrict h, float* __restrict y,
               Index n) {
  for (Index i = 0; i < n; ++i) {
    h[i] = a[i] + b[i];
    y[i] = a[i];
  }
}

void r3w1_loop(const float* __restrict a, const float* __restrict b, const float* __restrict c, float* __restrict d,
               Index n) {
  for (Index i = 0; i < n; ++i) d[i] = a[i] + b[i] + c[i];
}

// Non-temporal stores; every buffer is 64-byte aligned and every count here a multiple of 16.
void r2w2_nt(const float* __restrict a, const float* __restrict b, float* __restrict h, float* __restrict y, Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m512 va = _mm512_loadu_ps(a + i);
    _mm512_stream_ps(h + i, _mm512_add_ps(va, _mm512_loadu_ps(b + i)));
    _mm512_stream_ps(y + i, va);
  }
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8) {
    const __m256 va = _mm256_loadu_ps(a + i);
    _mm256_stream_ps(h + i, _mm256_add_ps(va, _mm256_loadu_ps(b + i)));
    _mm256_stream_ps(y + i, va);
  }
#else
  for (; i + 4 <= n; i += 4) {
    const __m128 va = _mm_loadu_ps(a + i);
    _mm_stream_ps(h + i, _mm_add_ps(va, _mm_loadu_ps(b + i)));
    _mm_stream_ps(y + i, va);
  }
#endif
  for (; i < n; ++i) h[i] = a[i] + b[i], y[i] = a[i];
  _mm_sfence();
}

void r3w1_nt(const float* __restrict a, const float* __restrict b, const float* __restrict c, float* __restrict d,
             Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_stream_ps(d + i, _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)),
                                          _mm512_loadu_ps(c + i)));
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8)
    _mm256_stream_ps(d + i, _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)),
                                          _mm256_loadu_ps(c + i)));
#else
  for (; i + 4 <= n; i += 4)
    _mm_stream_ps(d + i, _mm_add_ps(_mm_add_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)), _mm_loadu_ps(c + i)));
#endif
  for (; i < n; ++i) d[i] = a[i] + b[i] + c[i];
  _mm_sfence();
}

struct Shape {
  Index rows, features;
  std::string token() const { return std::to_string(rows) + "x" + std::to_string(features); }
};

template <class Fn>
void timed(benchmark::State& state, std::int64_t bytes, Fn&& call) {
  if (warm_up(bytes)) call();
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  set_bytes(state, bytes);
}

void run_copy(benchmark::State& state, Index floats, bool fwd, bool nt, std::int64_t bytes) {
  Buffers<float> buf = buffers<float>(static_cast<std::size_t>(floats));
  timed(state, bytes, [&] {
    if (fwd) (nt ? r2w2_nt : r2w2_loop)(buf.x, buf.dy, buf.dx, buf.y, floats);
    else (nt ? r3w1_nt : r3w1_loop)(buf.x, buf.dy, buf.y, buf.dx, floats);
  });
}

#if defined(NKBENCH_HAVE_NORMKIT)
template <class T>
using Map = Eigen::TensorMap<Eigen::Tensor<T, 2, Eigen::RowMajor>>;

template <class T, class Layer>
void run_layer(benchmark::State& state, Layer& layer, Shape s, bool fwd, bool fused, std::int64_t bytes) {
  const Index n = s.rows * s.features;
  Buffers<T> buf = buffers<T>(static_cast<std::size_t>(n));
  fill_random(layer.weight().data(), static_cast<std::size_t>(s.features), 11, 0.5, 1.5);
  if (layer.bias().size() > 0) fill_random(layer.bias().data(), static_cast<std::size_t>(s.features), 12, -0.5, 0.5);
  if (fwd) {
    Map<T> x(buf.x, s.rows, s.features), r(buf.dy, s.rows, s.features), h(buf.dx, s.rows, s.features),
        y(buf.y, s.rows, s.features);
    if (fused) {
      timed(state, bytes, [&] { benchmark::DoNotOptimize(layer.forward_add(x, r, h, y)); });
    } else {
      timed(state, bytes, [&] {
        h = x + r;
        benchmark::DoNotOptimize(layer.forward(h, y));
      });
    }
  } else {
    Map<T> h(buf.x, s.rows, s.features), dy(buf.dy, s.rows, s.features), dh(buf.y, s.rows, s.features),
        dx(buf.dx, s.rows, s.features);
    const normkit::NormStats<T> stats = layer.forward(h, dx);  // dx as scratch for y
    if (fused) {
      timed(state, bytes, [&] { benchmark::DoNotOptimize(layer.backward_add(h, dy, dh, stats, dx)); });
    } else {
      timed(state, bytes, [&] {
        benchmark::DoNotOptimize(layer.backward(h, dy, stats, dx));
        dx = dx + dh;
      });
    }
  }
}

template <class T, class P>
void run_norm(benchmark::State& state, bool ln, Shape s, bool fwd, bool fused, std::int64_t bytes) {
  try {
    if (ln) {
      normkit::LayerNorm<T, P> layer(s.features);
      run_layer<T>(state, layer, s, fwd, fused, bytes);
    } else {
      normkit::RMSNorm<T, P> layer(s.features);
      run_layer<T>(state, layer, s, fwd, fused, bytes);
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}
#endif

}  // namespace

void register_residual() {
  const std::vector<Shape> shapes = {{64, 768}, {4096, 768}, {16384, 4096}};
  for (const Dtype dt : {Dtype::FP32, Dtype::BF16}) {
    const std::int64_t esize = dt == Dtype::BF16 ? 2 : 4;
    for (const Shape& s : shapes) {
      const std::int64_t bytes = 4 * s.rows * s.features * esize;
      const Index floats = s.rows * s.features * esize / 4;
      const std::string tail = std::string("/") + dtype_name(dt) + "/" + s.token() + "/t1/";
      for (const bool fwd : {true, false}) {
        for (const bool nt : {false, true}) {
          configure(benchmark::RegisterBenchmark(
              (std::string("Copy/") + (fwd ? "r2w2" : "r3w1") + tail + (nt ? "nt" : "loop")).c_str(),
              [=](benchmark::State& st) { run_copy(st, floats, fwd, nt, bytes); }));
        }
#if defined(NKBENCH_HAVE_NORMKIT)
        for (const bool ln : {true, false}) {
          for (const bool fused : {true, false}) {
            const std::string name = std::string(ln ? "LayerNorm" : "RMSNorm") + (fwd ? "/fwd_add" : "/bwd_add") +
                                     tail + (fused ? "normkit" : "unfused");
            configure(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
              if (dt == Dtype::BF16) run_norm<Eigen::bfloat16, float>(st, ln, s, fwd, fused, bytes);
              else run_norm<float, float>(st, ln, s, fwd, fused, bytes);
            }));
          }
        }
#endif
      }
    }
  }
}

}  // namespace nkbench
