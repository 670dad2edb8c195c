// normkit/thread_pool.hpp — runs the core's chunks on an Eigen::ThreadPoolDevice.
//
// The core decides how many chunks a call is cut into from the shape alone (core/parallel.hpp); here
// each of min(threads, chunks, elements / kMinElementsPerThread) workers (at least one) takes a
// contiguous run of them, the first on the calling thread, and the call returns when all are done.
// Which worker runs a chunk never changes a result.
#pragma once

#include <algorithm>

#include "core/tuning.hpp"
#include "options.hpp"

namespace normkit::detail {

struct PoolExecutor {
  const Eigen::ThreadPoolDevice& device;

  Eigen::Index threads() const { return device.numThreads(); }

  // elements 0: not known, no cap.
  template <class F>
  void run(Eigen::Index chunks, F&& f, Eigen::Index elements = 0) const {
    if (chunks <= 0) return;
    const Eigen::Index cap = elements > 0 ? elements / core::tuning::kMinElementsPerThread : chunks;
    const Eigen::Index workers = std::max<Eigen::Index>(1, std::min({threads(), chunks, cap}));
    const auto work = [&f, chunks, workers](Eigen::Index t) {
      for (Eigen::Index k = chunks * t / workers, end = chunks * (t + 1) / workers; k < end; ++k) f(k);
    };
    if (workers <= 1) {
      work(0);
      return;
    }
    Eigen::Barrier barrier(static_cast<unsigned>(workers - 1));
    for (Eigen::Index t = 1; t < workers; ++t) device.enqueue_with_barrier(&barrier, [&work, t] { work(t); });
    work(0);
    barrier.Wait();
  }
};

}  // namespace normkit::detail
