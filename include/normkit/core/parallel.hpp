// normkit/core/parallel.hpp — how the drivers split work into chunks.
//
// An executor has threads() and run(chunks, f), which calls f(k) for every chunk k and returns when
// all are done. The serial one is here; the Eigen::ThreadPoolDevice one lives in the functor layer
// (normkit/thread_pool.hpp), so the core does not depend on the Tensor module. Work is split into
// contiguous chunks of groups; results that cross chunks (LayerNorm's dweight/dbias) are merged in
// chunk order, so a given chunk count always gives the same bits.
#pragma once

#include <algorithm>

#include <Eigen/Core>

namespace normkit::core {

using Eigen::Index;

struct SerialExecutor {
  Index threads() const { return 1; }
  template <class F>
  void run(Index chunks, F&& f) const {
    for (Index k = 0; k < chunks; ++k) f(k);
  }
};

// Below this many elements per chunk a thread costs more to wake than it saves.
inline constexpr Index kMinElementsPerChunk = Index(1) << 15;

// How many chunks to cut `units` (groups, or column packets) holding `elements` values into.
inline Index chunk_count(Index threads, Index units, Index elements) {
  const Index c = std::min({threads, units, elements / kMinElementsPerChunk});
  return c < 1 ? 1 : c;
}

// Chunk k of `chunks` covers units [chunk_begin(k), chunk_begin(k + 1)).
inline Index chunk_begin(Index units, Index chunks, Index k) { return units * k / chunks; }

}  // namespace normkit::core
