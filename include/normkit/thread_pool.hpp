// normkit/thread_pool.hpp — runs the core's chunks on an Eigen::ThreadPoolDevice.
//
// Chunk 0 runs on the calling thread, the others on the pool; the call returns when all are done.
// How many chunks a call is cut into is the core's decision (core/parallel.hpp): small inputs run
// on the calling thread alone.
#pragma once

#include "options.hpp"

namespace normkit::detail {

struct PoolExecutor {
  const Eigen::ThreadPoolDevice& device;

  Eigen::Index threads() const { return device.numThreads(); }

  template <class F>
  void run(Eigen::Index chunks, F&& f) const {
    if (chunks <= 1) {
      if (chunks == 1) f(Eigen::Index(0));
      return;
    }
    Eigen::Barrier barrier(static_cast<unsigned>(chunks - 1));
    for (Eigen::Index k = 1; k < chunks; ++k) device.enqueue_with_barrier(&barrier, [&f, k] { f(k); });
    f(Eigen::Index(0));
    barrier.Wait();
  }
};

}  // namespace normkit::detail
