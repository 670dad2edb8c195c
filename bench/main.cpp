// bench/main.cpp — normkit_bench: the case list, buffers, thread pool and main().
//
// Names: <Op>/<dir>/<dtype>/<shape>/t<threads>/<impl>, e.g. LayerNorm/fwd/fp32/4096x768/t1/normkit
// (Google Benchmark appends "/real_time"). Copy ceilings are shared by every case with the same
// bytes: Copy/<r1w1|r2w1>/<dtype>/<shape of the first case>/t<threads>/<loop|nt|memcpy>.
// dtype: fp32, fp64, bf16. The residual add + norm group (bench_residual.cpp) adds <Op>/fwd_add|bwd_add/...
// with normkit and unfused, and Copy/r2w2|r3w1/... The statistics group (bench_moments.cpp) is
// Moments/<function>/fp32/<shape>/t1. See bench/README.md.
#include "common.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace nkbench {

const char* op_name(Op op) {
  switch (op) {
    case Op::LayerNorm: return "LayerNorm";
    case Op::RMSNorm: return "RMSNorm";
    case Op::BatchNorm: return "BatchNorm";
    case Op::GroupNorm: return "GroupNorm";
    case Op::InstanceNorm: return "InstanceNorm";
  }
  return "?";
}

const char* dtype_name(Dtype t) {
  switch (t) {
    case Dtype::FP32: return "fp32";
    case Dtype::FP64: return "fp64";
    case Dtype::BF16: return "bf16";
  }
  return "?";
}

const char* dir_name(Dir d) {
  switch (d) {
    case Dir::Fwd: return "fwd";  // BatchNorm: "fwd_train", see Case::name
    case Dir::Bwd: return "bwd";
    case Dir::FwdEval: return "fwd_eval";
  }
  return "?";
}

Index Case::rows() const {
  Index r = 1;
  for (std::size_t i = 0; i + 1 < dims.size(); ++i) r *= dims[i];
  return r;
}
Index Case::features() const { return dims.back(); }

Index Case::outer() const {
  switch (layout) {
    case BnLayout::NCHW: return dims[0];
    case BnLayout::NHWC: return dims[0] * dims[1] * dims[2];
    case BnLayout::NC: return dims[0];
    case BnLayout::None: break;
  }
  return rows();
}
Index Case::channels() const {
  switch (layout) {
    case BnLayout::NCHW: return dims[1];
    case BnLayout::NHWC: return dims[3];
    case BnLayout::NC: return dims[1];
    case BnLayout::None: break;
  }
  return features();
}
Index Case::inner() const { return layout == BnLayout::NCHW ? dims[2] * dims[3] : 1; }

Index Case::elements() const {
  Index n = 1;
  for (Index d : dims) n *= d;
  return n;
}

std::string Case::shape_token() const {
  std::ostringstream s;
  if (col_major) s << "cm";
  switch (layout) {
    case BnLayout::NCHW: s << "nchw"; break;
    case BnLayout::NHWC: s << "nhwc"; break;
    case BnLayout::NC: s << "nc"; break;
    case BnLayout::None: break;
  }
  for (std::size_t i = 0; i < dims.size(); ++i) s << (i ? "x" : "") << dims[i];
  if (input_scale != 1) {  // "x1e30": %g without the exponent's '+' and leading zeros
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", input_scale);
    std::string g(buf);
    const std::size_t e = g.find('e');
    if (e != std::string::npos) {
      std::string exp = g.substr(e + 1);
      const bool neg = !exp.empty() && exp[0] == '-';
      if (!exp.empty() && (exp[0] == '+' || exp[0] == '-')) exp.erase(0, 1);
      while (exp.size() > 1 && exp[0] == '0') exp.erase(0, 1);
      g = g.substr(0, e + 1) + (neg ? "-" : "") + exp;
    }
    s << 'x' << g;
  }
  if (groups > 0) s << 'g' << groups;
  return s.str();
}

std::string Case::name(const std::string& impl) const {
  std::ostringstream s;
  const bool train_fwd = op != Op::LayerNorm && op != Op::RMSNorm && dir == Dir::Fwd;
  s << op_name(op) << '/' << (train_fwd ? "fwd_train" : dir_name(dir)) << '/' << dtype_name(dtype) << '/'
    << shape_token() << "/t" << threads << '/' << impl;
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Buffers

namespace {

struct Freer {
  void operator()(void* p) const { std::free(p); }
};

template <class T>
struct Pool {
  std::size_t capacity = 0;
  std::unique_ptr<T, Freer> x, y, dy, dx;
};

template <class T>
std::unique_ptr<T, Freer> allocate(std::size_t n) {
  const std::size_t align = n * sizeof(T) >= (std::size_t{4} << 20) ? (std::size_t{2} << 20) : 64;
  std::size_t bytes = n * sizeof(T);
  bytes = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, bytes);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align > 64) madvise(p, bytes, MADV_HUGEPAGE);  // same treatment for every implementation
#endif
  return std::unique_ptr<T, Freer>(static_cast<T*>(p));
}

}  // namespace

template <class T>
void fill_random(T* p, std::size_t n, std::uint64_t seed, double lo, double hi) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  const double scale = (hi - lo) / 9007199254740992.0;  // 2^53
  for (std::size_t i = 0; i < n; ++i) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    p[i] = static_cast<T>(lo + scale * static_cast<double>(s >> 11));
  }
}

template <class T>
Buffers<T> buffers(std::size_t elements) {
  static Pool<T> pool;
  if (elements > pool.capacity) {
    pool.x.reset();
    pool.y.reset();
    pool.dy.reset();
    pool.dx.reset();
    pool.x = allocate<T>(elements);
    pool.y = allocate<T>(elements);
    pool.dy = allocate<T>(elements);
    pool.dx = allocate<T>(elements);
    fill_random(pool.x.get(), elements, 1, -1.5, 2.5);
    fill_random(pool.dy.get(), elements, 2, -1.0, 1.0);
    std::memset(static_cast<void*>(pool.y.get()), 0, elements * sizeof(T));
    std::memset(static_cast<void*>(pool.dx.get()), 0, elements * sizeof(T));
    pool.capacity = elements;
  }
  return {pool.x.get(), pool.y.get(), pool.dy.get(), pool.dx.get()};
}

template <class T>
const T* scaled_input(std::size_t elements, double scale) {
  struct Scaled {
    std::size_t capacity = 0;
    std::unique_ptr<T, Freer> p;
  };
  static std::map<double, Scaled> pools;
  Scaled& s = pools[scale];
  if (elements > s.capacity) {
    s.p.reset();
    s.p = allocate<T>(elements);
    fill_random(s.p.get(), elements, 1, -1.5, 2.5);  // the values of buffers<T>().x
    for (std::size_t i = 0; i < elements; ++i) s.p.get()[i] = static_cast<T>(static_cast<double>(s.p.get()[i]) * scale);
    s.capacity = elements;
  }
  return s.p.get();
}

template Buffers<float> buffers<float>(std::size_t);
template Buffers<double> buffers<double>(std::size_t);
template Buffers<Eigen::bfloat16> buffers<Eigen::bfloat16>(std::size_t);
template void fill_random<float>(float*, std::size_t, std::uint64_t, double, double);
template void fill_random<double>(double*, std::size_t, std::uint64_t, double, double);
template void fill_random<Eigen::bfloat16>(Eigen::bfloat16*, std::size_t, std::uint64_t, double, double);
template const float* scaled_input<float>(std::size_t, double);
template const double* scaled_input<double>(std::size_t, double);
template const Eigen::bfloat16* scaled_input<Eigen::bfloat16>(std::size_t, double);

// ---------------------------------------------------------------------------------------------
// Threads

namespace {
int g_max_threads = 2;
}

Eigen::ThreadPoolDevice& pool_device(int threads) {
  static Eigen::ThreadPool pool(g_max_threads);
  static std::vector<std::unique_ptr<Eigen::ThreadPoolDevice>> devices = [] {
    std::vector<std::unique_ptr<Eigen::ThreadPoolDevice>> v;
    for (int t = 0; t <= g_max_threads; ++t) v.emplace_back(new Eigen::ThreadPoolDevice(&pool, std::max(t, 1)));
    return v;
  }();
  return *devices.at(static_cast<std::size_t>(threads));
}

void parallel_run(int threads, const std::function<void(int, int)>& f) {
  if (threads <= 1) {
    f(0, 1);
    return;
  }
  Eigen::ThreadPoolInterface* pool = pool_device(threads).getPool();
  Eigen::Barrier barrier(static_cast<unsigned>(threads - 1));
  for (int t = 1; t < threads; ++t) {
    pool->Schedule([&f, &barrier, t, threads] {
      f(t, threads);
      barrier.Notify();
    });
  }
  f(0, threads);
  barrier.Wait();
}

void split_range(Index n, int tid, int parts, Index align, Index& begin, Index& end) {
  const Index units = (n + align - 1) / align;
  const Index per = units / parts, rem = units % parts;
  const Index b = tid * per + std::min<Index>(tid, rem);
  const Index e = b + per + (tid < rem ? 1 : 0);
  begin = std::min(n, b * align);
  end = std::min(n, e * align);
}

benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  return b->UseRealTime()->Unit(benchmark::kMicrosecond);
}

// ---------------------------------------------------------------------------------------------
// The case list

namespace {

std::vector<int> thread_counts() {
  std::vector<int> t;
  const char* env = std::getenv("NORMKIT_BENCH_THREADS");  // e.g. "1,2" (the default)
  std::string s = env && *env ? env : "1,2";
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const int v = std::atoi(item.c_str());
    if (v >= 1) t.push_back(v);
  }
  if (t.empty()) t = {1, 2};
  return t;
}

std::vector<Case> make_cases(const std::vector<int>& threads) {
  std::vector<Case> cases;
  const std::vector<std::vector<Index>> ln_shapes = {{64, 768}, {4096, 768}, {2048, 4096}, {512, 16384}, {16384, 4096}};
  for (Op op : {Op::LayerNorm, Op::RMSNorm}) {
    for (Dir dir : {Dir::Fwd, Dir::Bwd}) {
      for (const auto& shape : ln_shapes) {
        for (Dtype dt : {Dtype::FP32, Dtype::FP64}) {
          if (dt == Dtype::FP64 && shape != std::vector<Index>{4096, 768}) continue;
          for (int t : threads) cases.push_back(Case{op, dir, dt, t, BnLayout::None, shape});
        }
      }
    }
  }
  struct BnShape {
    BnLayout layout;
    std::vector<Index> dims;
  };
  const std::vector<BnShape> bn_shapes = {{BnLayout::NCHW, {32, 64, 56, 56}},
                                          {BnLayout::NHWC, {32, 56, 56, 64}},
                                          {BnLayout::NC, {256, 1024}}};
  for (Dir dir : {Dir::Fwd, Dir::Bwd, Dir::FwdEval}) {
    for (const auto& s : bn_shapes) {
      for (Dtype dt : {Dtype::FP32, Dtype::FP64}) {
        if (dt == Dtype::FP64 && s.layout != BnLayout::NCHW) continue;
        for (int t : threads) cases.push_back(Case{Op::BatchNorm, dir, dt, t, s.layout, s.dims});
      }
    }
  }
  // Added cases come last, so that the copy ceilings registered for the cases above keep the
  // names they had (a copy is named after the first case that needs its byte count).
  // bfloat16 (normkit as LayerNorm<bfloat16, float>), one thread.
  for (Op op : {Op::LayerNorm, Op::RMSNorm})
    for (Dir dir : {Dir::Fwd, Dir::Bwd})
      for (const std::vector<Index>& shape : {std::vector<Index>{4096, 768}, std::vector<Index>{16384, 4096}})
        cases.push_back(Case{op, dir, Dtype::BF16, 1, BnLayout::None, shape});
  // Rows of magnitude 1e30, whose squares overflow float: every row takes the rescaled path of the
  // statistics (normkit only; same bytes as the ordinary 4096x768 case, whose copy it shares).
  cases.push_back(Case{Op::LayerNorm, Dir::Fwd, Dtype::FP32, 1, BnLayout::None, {4096, 768}, 1e30});
  // LayerNorm/RMSNorm on ColMajor tensors (features strided by rows: the column kernels), fp32.
  for (Op op : {Op::LayerNorm, Op::RMSNorm})
    for (Dir dir : {Dir::Fwd, Dir::Bwd})
      for (const std::vector<Index>& shape :
           {std::vector<Index>{64, 768}, std::vector<Index>{4096, 768}, std::vector<Index>{2048, 4096}})
        for (int t : threads) cases.push_back(Case{op, dir, Dtype::FP32, t, BnLayout::None, shape, 1, 0, true});
  // GroupNorm (a diffusion U-Net block (8, 320, 64, 64) and (16, 64, 56, 56), G = 32) and
  // InstanceNorm (32, 64, 28, 28; also eval with running statistics), NCHW and channels-last
  // (dims in memory order); fp32 on every thread count, bf16 (parameters float) on one thread.
  struct GnShape {
    Op op;
    std::vector<Index> nchw;
    Index groups;
  };
  for (const GnShape& s : {GnShape{Op::GroupNorm, {8, 320, 64, 64}, 32}, GnShape{Op::GroupNorm, {16, 64, 56, 56}, 32},
                           GnShape{Op::InstanceNorm, {32, 64, 28, 28}, 0}})
    for (Dir dir : {Dir::Fwd, Dir::Bwd, Dir::FwdEval}) {
      if (dir == Dir::FwdEval && s.op != Op::InstanceNorm) continue;
      for (BnLayout layout : {BnLayout::NCHW, BnLayout::NHWC}) {
        const std::vector<Index> d = layout == BnLayout::NCHW
                                         ? s.nchw
                                         : std::vector<Index>{s.nchw[0], s.nchw[2], s.nchw[3], s.nchw[1]};
        for (int t : threads) cases.push_back(Case{s.op, dir, Dtype::FP32, t, layout, d, 1, s.groups});
        cases.push_back(Case{s.op, dir, Dtype::BF16, 1, layout, d, 1, s.groups});
      }
    }
  return cases;
}

// The packets every translation unit of this binary was compiled for: what the ISA label
// (NKBENCH_MARCH, from NORMKIT_BENCH_MARCH) means on this build.
std::string simd_description() {
#if defined(EIGEN_VECTORIZE_AVX512)
  const char* isa = "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2) && defined(EIGEN_VECTORIZE_FMA)
  const char* isa = "AVX2+FMA";
#elif defined(EIGEN_VECTORIZE_AVX)
  const char* isa = "AVX";
#elif defined(EIGEN_VECTORIZE_SSE4_2)
  const char* isa = "SSE4.2";
#elif defined(EIGEN_VECTORIZE_SSE2)
  const char* isa = "SSE2";
#elif defined(EIGEN_VECTORIZE_NEON)
  const char* isa = "NEON";
#else
  const char* isa = "no SIMD";
#endif
  const int floats = Eigen::internal::packet_traits<float>::size;
  return std::string(isa) + ", " + std::to_string(floats) + " floats per packet";
}

}  // namespace

}  // namespace nkbench

#ifndef NKBENCH_MARCH
#define NKBENCH_MARCH "unknown"  // bench/CMakeLists.txt always defines it
#endif

int main(int argc, char** argv) {
  using namespace nkbench;
  const std::vector<int> threads = thread_counts();
  g_max_threads = *std::max_element(threads.begin(), threads.end());

  // report.py makes one set of tables per normkit_march.
  benchmark::AddCustomContext("normkit_march", NKBENCH_MARCH);
  benchmark::AddCustomContext("normkit_simd", simd_description());
  // oneDNN dispatches on the CPU at run time; this caps it (scripts/bench-isa.sh sets it per ISA).
  for (const char* var : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    if (const char* value = std::getenv(var)) benchmark::AddCustomContext(var, value);
  }
  benchmark::AddCustomContext("normkit_available", normkit_available() ? "yes" : "no");
  benchmark::AddCustomContext("onednn_available", onednn_available() ? "yes" : "no");
  benchmark::AddCustomContext("bytes_convention",
                              "fwd/eval: x read + y written; bwd: x and dy read + dx written; "
                              "parameters and statistics not counted");
  if (!normkit_available()) {
    std::cerr << "normkit_bench: <normkit/normkit.hpp> was not found at build time; only baselines run\n";
  }

  for (const Case& c : make_cases(threads)) {
    register_copy(c);
    register_normkit(c);
    register_eigen(c);
    register_scalar(c);
    register_onednn(c);
  }
  register_moments();
  register_residual();

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
