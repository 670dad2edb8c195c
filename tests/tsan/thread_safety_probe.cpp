// ThreadSanitizer probe of the thread-safety statements in docs/api.md ("Thread safety"); built and
// run by scripts/tsan-probe.sh, not by ctest (it needs -fsanitize=thread on everything).
//
//   ./probe ln       3 threads, forward + backward on one const LayerNorm          -> must be clean
//   ./probe rms      3 threads, forward + backward on one const RMSNorm            -> must be clean
//   ./probe lnpool   3 threads, the ThreadPoolDevice overloads of one const LayerNorm, one shared
//                    2-thread device                                                -> must be clean
//   ./probe bneval   2 threads, eval-mode forward + backward on one BatchNorm       -> must be clean
//   ./probe bntrain  2 threads, training-mode forward + backward on one BatchNorm   -> races on the
//                    running statistics (documented: give each thread its own BatchNorm)
// Each thread has its own data; 20 iterations each, so that the accesses overlap in time.
#include <normkit/normkit.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

using Rows = Eigen::Tensor<float, 2, Eigen::RowMajor>;
using Images = Eigen::Tensor<float, 4, Eigen::RowMajor>;
constexpr int kIterations = 20;

template <class F>
void on_threads(int count, F f) {
  std::vector<std::thread> threads;
  for (int t = 0; t < count; ++t) threads.emplace_back(f, t);
  for (auto& t : threads) t.join();
}

// Distinct data per thread: x = sin(i) + thread.
template <class Tensor>
void fill(Tensor& x, int thread) {
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.1f * float(i)) + float(thread);
}

template <class Norm>
void share_trailing(const Norm& norm, const Eigen::ThreadPoolDevice* device) {
  on_threads(3, [&](int t) {
    // 2^19 values, two threads' worth (core/tuning.hpp: kMinElementsPerThread): the device splits them
    Rows x(1024, 512), y(1024, 512), dx(1024, 512);
    fill(x, t);
    for (int i = 0; i < kIterations; ++i) {
      const auto stats = device ? norm.forward(*device, x, y) : norm.forward(x, y);
      const auto grads = device ? norm.backward(*device, x, y, stats, dx) : norm.backward(x, y, stats, dx);
      if (grads.weight.size() != 512) std::abort();
    }
  });
}

void share_batch_norm(bool training) {
  normkit::BatchNorm<float> bn(16);
  bn.train(training);
  on_threads(2, [&](int t) {
    Images x(8, 16, 8, 8), y(8, 16, 8, 8), dx(8, 16, 8, 8);
    fill(x, t);
    for (int i = 0; i < kIterations; ++i) {
      const auto stats = bn.forward(x, y);
      bn.backward(x, y, stats, dx);
    }
  });
  std::printf("num_batches_tracked %lld\n", static_cast<long long>(bn.num_batches_tracked()));
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  normkit::LayerNorm<float> ln(512);
  normkit::RMSNorm<float> rms(512);
  for (Eigen::Index i = 0; i < 512; ++i) ln.weight()(i) = rms.weight()(i) = 1.0f + 0.01f * float(i % 7);
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);

  if (mode == "ln") share_trailing(ln, nullptr);
  else if (mode == "rms") share_trailing(rms, nullptr);
  else if (mode == "lnpool") share_trailing(ln, &device);
  else if (mode == "bneval") share_batch_norm(false);
  else if (mode == "bntrain") share_batch_norm(true);
  else {
    std::fprintf(stderr, "usage: %s ln|rms|lnpool|bneval|bntrain\n", argv[0]);
    return 2;
  }
  std::printf("%s done (simd_path %s)\n", mode.c_str(), normkit::simd_path());
  return 0;
}
