// bench/common.hpp — shared pieces of the normkit_bench harness: the list of cases, their names,
// the preallocated buffers and the thread helpers. Every translation unit of normkit_bench is
// compiled with EIGEN_USE_THREADS (set by bench/CMakeLists.txt), the same as <normkit/normkit.hpp>.
#pragma once

#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS
#endif

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <unsupported/Eigen/CXX11/Tensor>

namespace nkbench {

using Index = Eigen::Index;

enum class Op { LayerNorm, RMSNorm, BatchNorm, GroupNorm, InstanceNorm };
// LayerNorm/RMSNorm use Fwd and Bwd. BatchNorm: Fwd = training forward (batch statistics +
// running-stat update), Bwd = training backward (full batch gradient), FwdEval = eval forward.
// GroupNorm/InstanceNorm the same way (InstanceNorm FwdEval: eval with running statistics).
enum class Dir { Fwd, Bwd, FwdEval };
// BatchNorm memory layouts. NCHW: RowMajor (N, C, H, W), channel_axis = 1. NHWC: the same data
// channels-last, RowMajor (N, H, W, C), channel_axis = -1. NC: RowMajor (N, C), channel_axis = 1.
// GroupNorm and InstanceNorm use NCHW and NHWC too.
enum class BnLayout { None, NCHW, NHWC, NC };
// Storage type of x, y, dy, dx. BF16 is Eigen::bfloat16; normkit runs it as LayerNorm<bfloat16,
// float> (float weight and bias, statistics in float).
enum class Dtype { FP32, FP64, BF16 };

struct Case {
  Op op = Op::LayerNorm;
  Dir dir = Dir::Fwd;
  Dtype dtype = Dtype::FP32;
  int threads = 1;
  BnLayout layout = BnLayout::None;
  std::vector<Index> dims;  // dimensions in memory order (RowMajor), as passed to normkit
  // Inputs multiplied by this factor (1: the ordinary data). Only normkit runs scaled cases; the
  // shape token gets an "x<scale>" suffix, e.g. "4096x768x1e30".
  double input_scale = 1;
  // GroupNorm's num_groups (0 otherwise); the shape token gets a "g<groups>" suffix, e.g.
  // "nchw8x320x64x64g32".
  Index groups = 0;
  // LayerNorm/RMSNorm only: x is an Eigen::ColMajor (rows, features) tensor, so each row's features
  // are `rows` elements apart (the core's column kernels); the shape token gets a "cm" prefix,
  // e.g. "cm4096x768". normkit and copy only.
  bool col_major = false;

  // LayerNorm/RMSNorm view: rows x features (features = last dim).
  Index rows() const;
  Index features() const;
  // BatchNorm view: x[(o * channels + c) * inner + i].
  Index outer() const;
  Index channels() const;
  Index inner() const;

  Index elements() const;
  std::size_t elem_bytes() const { return dtype == Dtype::FP64 ? 8 : dtype == Dtype::BF16 ? 2 : 4; }
  // Arrays streamed per call by the byte convention: forward / eval: read x, write y (1 read);
  // backward: read x and dy, write dx (2 reads). Parameters and statistics are not counted.
  int reads() const { return dir == Dir::Bwd ? 2 : 1; }
  std::int64_t bytes() const {
    return static_cast<std::int64_t>(elements()) * static_cast<std::int64_t>(elem_bytes()) * (reads() + 1);
  }
  std::string shape_token() const;                  // "4096x768", "nchw32x64x56x56", "4096x768x1e30"
  std::string name(const std::string& impl) const;  // "LayerNorm/fwd/fp32/4096x768/t1/normkit"
};

const char* op_name(Op op);
const char* dir_name(Dir d);
const char* dtype_name(Dtype t);  // "fp32", "fp64", "bf16"

// Preallocated, 64-byte aligned buffers, grown on demand (never shrunk) and fully initialised when
// (re)allocated, i.e. outside every timed region: x and dy hold pseudo-random values in about
// [-1.5, 2.5], y and dx are zero-filled (touched) output buffers. All cases of one dtype share them.
template <class T>
struct Buffers {
  T* x;
  T* y;
  T* dy;
  T* dx;
};
template <class T>
Buffers<T> buffers(std::size_t elements);

// Deterministic pseudo-random values for parameters (weight around 1, bias around 0).
template <class T>
void fill_random(T* p, std::size_t n, std::uint64_t seed, double lo, double hi);

// A separate input buffer holding the values of buffers<T>(elements).x multiplied by `scale`
// (one buffer per scale, allocated and filled outside every timed region).
template <class T>
const T* scaled_input(std::size_t elements, double scale);

// Thread pool shared by every threaded case (normkit, Eigen baseline, scalar and copy kernels).
// Its size is the largest thread count requested.
Eigen::ThreadPoolDevice& pool_device(int threads);
// Runs f(tid, nthreads) for tid in [0, threads): tid 0 on the calling thread, the rest on the pool.
void parallel_run(int threads, const std::function<void(int, int)>& f);
// [begin, end) of chunk `tid` of `n` items split over `parts`, boundaries multiples of `align`.
void split_range(Index n, int tid, int parts, Index align, Index& begin, Index& end);

// Common benchmark settings: real time, microseconds.
benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b);
// Each benchmark makes one untimed call before its timed loop (caches, page tables, pool threads),
// except for calls moving >= 256 MiB: there the setup has already touched every buffer and one
// call costs as much as a whole short run.
inline bool warm_up(std::int64_t bytes_per_call) { return bytes_per_call < (std::int64_t{256} << 20); }
inline void set_bytes(benchmark::State& state, std::int64_t bytes_per_call) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * bytes_per_call);
}

// Registration entry points, one per implementation (each in its own translation unit).
void register_copy(const Case& c);     // bench_copy.cpp   (deduplicated by bytes and threads)
void register_normkit(const Case& c);  // bench_normkit.cpp (empty until normkit.hpp exists)
void register_eigen(const Case& c);    // bench_eigen.cpp
void register_scalar(const Case& c);   // bench_scalar.cpp
void register_onednn(const Case& c);   // bench_onednn.cpp  (empty without oneDNN)
void register_moments();               // bench_moments.cpp (the Moments/... group; empty without normkit)
void register_residual();              // bench_residual.cpp (fwd_add/bwd_add, their copies and unfused forms)
bool normkit_available();
bool onednn_available();

}  // namespace nkbench
