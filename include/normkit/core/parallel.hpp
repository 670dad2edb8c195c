// normkit/core/parallel.hpp — executors, and how many chunks a call is cut into.
//
// An executor has threads() and run(chunks, f, elements), which calls f(k) for every chunk k and
// returns when all are done; elements (the values the call reads, optional) lets it keep a small
// call on fewer threads than it has (tuning.hpp: kMinElementsPerThread). The serial one is here;
// the Eigen::ThreadPoolDevice one lives in the functor layer (normkit/thread_pool.hpp), so the core
// does not depend on the Tensor module.
// How many chunks a call is cut into depends on the shape alone, never on the thread count: results
// that cross chunks (parameter gradients, the statistics of a column cut into row chunks) are
// partials over those fixed chunks merged in chunk order, so every thread count, and the plain
// call, gives the same bits. Threads take contiguous runs of chunks.
#pragma once

#include <algorithm>

#include <Eigen/Core>

#include "tuning.hpp"

namespace normkit::core {

using Eigen::Index;

struct SerialExecutor {
  Index threads() const { return 1; }
  template <class F>
  void run(Index chunks, F&& f, Index = 0) const {
    for (Index k = 0; k < chunks; ++k) f(k);
  }
};

// How many chunks to cut `units` (groups, column packets, rows) holding `elements` values into: a
// function of the shape only. max_chunks lowers the cap where each chunk carries a partial result
// of its own.
inline Index chunk_count(Index units, Index elements, Index max_chunks = tuning::kMaxChunks) {
  const Index c = std::min({max_chunks, units, elements / tuning::kMinElementsPerChunk});
  return c < 1 ? 1 : c;
}

// Chunk k of `chunks` covers units [chunk_begin(k), chunk_begin(k + 1)).
inline Index chunk_begin(Index units, Index chunks, Index k) { return units * k / chunks; }

}  // namespace normkit::core
