// bench/bench_copy.cpp — the memory-bandwidth ceilings.
//
// r1w1 (forward, eval): copy the x-sized array into the y-sized array, three ways:
//   loop   : explicit vector loads + regular stores (the compiler cannot turn it into memcpy)
//   nt     : vector loads + non-temporal (streaming) stores, then sfence
//   memcpy : std::memcpy (glibc picks its own strategy, non-temporal above a size threshold)
// r2w1 (backward): dx[i] = x[i] + dy[i] with regular stores (loop) and non-temporal stores (nt).
// The report takes the best variant as "copy". With t threads each thread handles a contiguous
// 64-byte aligned chunk. A copy is registered once per (pattern, bytes, threads) and named after
// the first case that needs it.
#include "common.hpp"

#include <cstring>
#include <set>
#include <tuple>

#include <immintrin.h>

namespace nkbench {
namespace {

// Byte counts are multiples of 4 for every case, so the kernels work on floats (for fp64 and bf16
// cases they move the same bytes: 2x or 1/2 the floats).
void copy_loop(const float* __restrict src, float* __restrict dst, Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  for (; i + 64 <= n; i += 64) {
    const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
    const __m512 c = _mm512_loadu_ps(src + i + 32), d = _mm512_loadu_ps(src + i + 48);
    _mm512_storeu_ps(dst + i, a);
    _mm512_storeu_ps(dst + i + 16, b);
    _mm512_storeu_ps(dst + i + 32, c);
    _mm512_storeu_ps(dst + i + 48, d);
  }
#elif defined(__AVX__)
  for (; i + 32 <= n; i += 32) {
    const __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
    const __m256 c = _mm256_loadu_ps(src + i + 16), d = _mm256_loadu_ps(src + i + 24);
    _mm256_storeu_ps(dst + i, a);
    _mm256_storeu_ps(dst + i + 8, b);
    _mm256_storeu_ps(dst + i + 16, c);
    _mm256_storeu_ps(dst + i + 24, d);
  }
#elif defined(__SSE2__)
  // An SSE build's ceiling is an SSE copy, not the scalar tail loop below.
  for (; i + 16 <= n; i += 16) {
    const __m128 a = _mm_loadu_ps(src + i), b = _mm_loadu_ps(src + i + 4);
    const __m128 c = _mm_loadu_ps(src + i + 8), d = _mm_loadu_ps(src + i + 12);
    _mm_storeu_ps(dst + i, a);
    _mm_storeu_ps(dst + i + 4, b);
    _mm_storeu_ps(dst + i + 8, c);
    _mm_storeu_ps(dst + i + 12, d);
  }
#endif
  for (; i < n; ++i) {
    dst[i] = src[i];
    benchmark::ClobberMemory();  // keep the tail a loop (no memcpy pattern)
  }
}

// Non-temporal stores need a 64-byte aligned destination: head and tail use regular stores.
void copy_nt(const float* __restrict src, float* __restrict dst, Index n) {
  Index i = 0;
  while (i < n && (reinterpret_cast<std::uintptr_t>(dst + i) & 63) != 0) {
    dst[i] = src[i];
    ++i;
  }
#if defined(__AVX512F__)
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
    _mm512_stream_ps(dst + i, a);
    _mm512_stream_ps(dst + i + 16, b);
  }
#elif defined(__AVX__)
  for (; i + 16 <= n; i += 16) {
    const __m256 a = _mm256_loadu_ps(src + i), b = _mm256_loadu_ps(src + i + 8);
    _mm256_stream_ps(dst + i, a);
    _mm256_stream_ps(dst + i + 8, b);
  }
#else
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
  _mm_sfence();
}

void add_loop(const float* __restrict a, const float* __restrict b, float* __restrict dst, Index n) {
  for (Index i = 0; i < n; ++i) dst[i] = a[i] + b[i];
}

void add_nt(const float* __restrict a, const float* __restrict b, float* __restrict dst, Index n) {
  Index i = 0;
  while (i < n && (reinterpret_cast<std::uintptr_t>(dst + i) & 63) != 0) {
    dst[i] = a[i] + b[i];
    ++i;
  }
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
#elif defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
#else
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_add_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
#endif
  for (; i < n; ++i) dst[i] = a[i] + b[i];
  _mm_sfence();
}

enum class Variant { Loop, NT, Memcpy };

void run_copy(benchmark::State& state, Index floats, int threads, int reads, Variant v, std::int64_t bytes) {
  // The buffers of the float pool are large enough for every case (fp64 cases use 2x the floats,
  // bf16 cases half).
  Buffers<float> buf = buffers<float>(static_cast<std::size_t>(floats));
  const float* x = buf.x;
  const float* dy = buf.dy;
  float* out = reads == 2 ? buf.dx : buf.y;
  auto body = [&](int tid, int parts) {
    Index b = 0, e = 0;
    split_range(floats, tid, parts, 16, b, e);
    if (reads == 1) {
      switch (v) {
        case Variant::Loop: copy_loop(x + b, out + b, e - b); break;
        case Variant::NT: copy_nt(x + b, out + b, e - b); break;
        case Variant::Memcpy: std::memcpy(out + b, x + b, static_cast<std::size_t>(e - b) * sizeof(float)); break;
      }
    } else {
      if (v == Variant::NT) add_nt(x + b, dy + b, out + b, e - b);
      else add_loop(x + b, dy + b, out + b, e - b);
    }
  };
  if (warm_up(bytes)) parallel_run(threads, body);  // warm-up, outside the timed loop
  for (auto _ : state) {
    parallel_run(threads, body);
    benchmark::ClobberMemory();
  }
  set_bytes(state, bytes);
}

}  // namespace

void register_copy(const Case& c) {
  static std::set<std::tuple<int, std::int64_t, int>> done;
  const std::int64_t bytes = c.bytes();
  if (!done.insert({c.reads(), bytes, c.threads}).second) return;
  const Index array_bytes = c.elements() * static_cast<Index>(c.elem_bytes());
  if (array_bytes % 4 != 0) return;  // never for the cases of main.cpp (bf16 shapes are even)
  const Index floats = array_bytes / 4;
  Case plain = c;  // named after the shape, without a scaled case's "x1e30"
  plain.input_scale = 1;
  const std::string prefix = std::string("Copy/") + (c.reads() == 2 ? "r2w1/" : "r1w1/") + dtype_name(c.dtype) + "/" +
                             plain.shape_token() + "/t" + std::to_string(c.threads) + "/";
  const int threads = c.threads, reads = c.reads();
  struct Named {
    const char* name;
    Variant v;
  };
  for (Named n : {Named{"loop", Variant::Loop}, Named{"nt", Variant::NT}, Named{"memcpy", Variant::Memcpy}}) {
    if (reads == 2 && n.v == Variant::Memcpy) continue;
    configure(benchmark::RegisterBenchmark((prefix + n.name).c_str(), [=](benchmark::State& st) {
      run_copy(st, floats, threads, reads, n.v, bytes);
    }));
  }
}

}  // namespace nkbench
