// normkit/core/parallel.hpp — how the drivers split work into chunks.
//
// An executor has threads() and run(chunks, f), which calls f(k) for every chunk k and returns when
// all are done. The serial one is here; the Eigen::ThreadPoolDevice one lives in the functor layer
// (normkit/thread_pool.hpp), so the core does not depend on the Tensor module.
// How many chunks a call is cut into depends on the shape alone, never on the thread count: results
// that cross chunks (parameter gradients, the statistics of a column cut into row chunks) are
// partials over those fixed chunks merged in chunk order, so every thread count, and the plain call,
// gives the same bits. Threads take contiguous runs of chunks.
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

// Elements per chunk, at least. A pool thread takes ~2-5 us to wake, so a chunk should hold tens of
// microseconds of work; and since the chunk count no longer follows the thread count, each chunk
// also costs the serial call its setup and its partials' merge: 2^16 values (256 KiB of floats) is
// a few times the wake-up and leaves the setup per chunk negligible.
inline constexpr Index kMinElementsPerChunk = Index(1) << 16;
// At most this many chunks: enough to keep 64 threads busy; more would only add partials to merge.
inline constexpr Index kMaxChunks = 64;

// How many chunks to cut `units` (groups, column packets, rows) holding `elements` values into: a
// function of the shape only (see above). max_chunks lowers the cap where each chunk carries a
// partial result of its own.
inline Index chunk_count(Index units, Index elements, Index max_chunks = kMaxChunks) {
  const Index c = std::min({max_chunks, units, elements / kMinElementsPerChunk});
  return c < 1 ? 1 : c;
}

// Chunk k of `chunks` covers units [chunk_begin(k), chunk_begin(k + 1)).
inline Index chunk_begin(Index units, Index chunks, Index k) { return units * k / chunks; }

}  // namespace normkit::core
