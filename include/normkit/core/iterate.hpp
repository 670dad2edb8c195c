// normkit/core/iterate.hpp — the iteration layer: how a tensor seen as [outer][groups][inner] is
// walked, cut into chunks, and how what crosses chunks is merged.
//
// Every layer is a set of groups normalized independently: element (o, g, i) of a dense buffer sits
// at (o * groups + g) * inner + i, and group g holds outer * inner values.
//   LayerNorm/RMSNorm, RowMajor : [1][rows][features]      -> one contiguous run per group
//   LayerNorm/RMSNorm, ColMajor : [features][rows][1]      -> a column per group
//   BatchNorm, channel axis 1   : [N][C][H*W]              -> N runs per group (RowMajor)
//   BatchNorm, channels-last    : [N*H*W][C][1]            -> a column per group
//   GroupNorm, NCHW             : [1][N*G][C/G*H*W]        -> one run per group, C/G channels in it
// So two shapes cover everything: inner > 1 (rows) runs the row kernels run by run, inner == 1
// (columns) the column kernels on panels of columns.
//
// The math comes from a policy (norm_policies.hpp has forward and backward); a pass over a group is
//   reduce:  Partial p = reduce_run(...) per run, or reduce_panel(...) per panel of columns,
//            partials of one group combined in a fixed order (Policy::combine),
//   finish:  Coef c = finish(g, start(g), p)     (statistics -> sweep coefficients; writes stats)
//   sweep:   sweep_runs<R>(...) / sweep_panel(...) with those coefficients,
// or, for a sweep alone, Coef c = given(g) from statistics computed elsewhere. Which of these a call
// runs is its Passes. A column panel keeps its columns' coefficients in a Policy::Columns
// (set(j, c), get(j)), laid out as the policy's column kernels read them.
// The policy's per-chunk partial (per-element parameter gradients: partial_size() values) is summed
// over the chunks in chunk order and handed to merge_partials.
// The chunk count follows from the shape alone (parallel.hpp), so no result depends on the thread
// count. The tuning constants behind every decision here are in tuning.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "parallel.hpp"
#include "simd.hpp"
#include "stats.hpp"
#include "tuning.hpp"

namespace normkit::core {

struct GroupShape {
  Index outer = 1, groups = 0, inner = 1;
  Index group_size() const { return outer * inner; }
  Index size() const { return outer * groups * inner; }
  Index run_at(Index o, Index g) const { return (o * groups + g) * inner; }
};

// Which passes a call runs: reduce and finish only (statistics or sums completed elsewhere, e.g.
// across processes), the sweep only (coefficients from given statistics), or both, fused.
enum class Passes { Reduce, Sweep, Both };

namespace detail {

// Columns per panel for `rows` rows: the widest panel of whole packets that fits the panel budget,
// or the widest panel when even one packet does not (long columns stream from memory anyway).
template <class A, class T>
Index panel_width(Index rows) {
  constexpr Index W = simd::width<A>;
  const Index fit = tuning::kPanelBudgetBytes / (std::max<Index>(rows, 1) * Index(sizeof(T)));
  return fit < 8 * W ? kMaxPanel<A> : std::min(kMaxPanel<A>, fit / W * W);
}

template <class T>
Index bytes_of(const GroupShape& s, Index inputs) {
  return inputs * s.size() * Index(sizeof(T));
}

// Sweep kBatchGroups consecutive groups at once (their runs share per-element parameters) while
// the batch's inputs fit in L1; not for streams of packets narrower than a cache line.
template <class A, class T>
bool batch_groups(const GroupShape& s, Index inputs, bool stream) {
  if (stream && simd::width<A> * Index(sizeof(T)) < tuning::kCacheLineBytes) return false;
  return tuning::kBatchGroups * inputs * s.group_size() * Index(sizeof(T)) <= tuning::kBatchBytes;
}

// Batches prefetch the next batch into L2 when the inputs do not stay there by themselves, in the
// sweeps that read two arrays per element (backward: x and dy); a sweep reading one (forward,
// whose residual form reads x and r but is bound by its two output streams) gains nothing from
// it and loses to the prefetches' outstanding misses (tuning.hpp: kBeyondL2Bytes).
template <class T>
bool prefetch_batches(const GroupShape& s, Index inputs) {
  return inputs > 1 && bytes_of<T>(s, inputs) >= tuning::kBeyondL2Bytes;
}

// Groups swept one at a time prefetch the next group during the sweep when the inputs are beyond
// L3 (tuning.hpp: kL2Bytes, l3_bytes()), rows as well as multi-run groups.
template <class T>
bool prefetch_groups(const GroupShape& s, Index inputs) {
  const Index group_bytes = s.group_size() * Index(sizeof(T));
  return 2 * inputs * group_bytes <= tuning::kL2Bytes && bytes_of<T>(s, inputs) > tuning::l3_bytes();
}

}  // namespace detail

// Whether a sweep streams its stores (tuning.hpp: kStreamBytes), by the size of the whole output
// the call writes a part of: a functor that calls once per sample (GroupNorm channels-last,
// InstanceNorm) writes a 40 MiB output 5 MiB at a time, and decided per call, every line of it went
// through the cache and was read for ownership first.
template <class T>
bool stream_output(Index output_elements) {
  return output_elements * Index(sizeof(T)) >= tuning::kStreamBytes;
}

// Whether the column kernels prefetch their strips' lines (col_kernels.hpp), by the size of the
// whole tensor as for stream_output: not when the inputs of the whole pass fit in L2, where they are
// found in cache (a model's activations between layers, a benchmark's loop) and the prefetches only
// take issue slots (ColMajor LayerNorm 64x768 measured slower with them in the AVX2 build).
template <class T>
bool prefetch_columns(Index elements, Index inputs) {
  return inputs * elements * Index(sizeof(T)) > tuning::kL2Bytes;
}

namespace detail {

// How a shape is cut into chunks: by groups (rows) or by whole column panels, so that a column
// shape's panels are the same whatever the chunk count. `partial`: values of the partial result
// each chunk keeps; the chunks are capped so that all partials stay within kPartialBytes.
struct Chunking {
  Index units, chunks, unit_width;
};
template <class A, class T>
Chunking chunking(const GroupShape& s, Index partial = 0) {
  const Index width = s.inner > 1 ? 1 : panel_width<A, T>(s.outer);
  const Index units = (s.groups + width - 1) / width;
  const Index cap = partial ? std::max<Index>(1, tuning::kPartialBytes / (partial * Index(sizeof(A))))
                            : tuning::kMaxChunks;
  return {units, chunk_count(units, s.size(), std::min(cap, tuning::kMaxChunks)), width};
}

// Column shapes with few columns (BatchNorm channels-last) are cut by rows instead: chunks that took
// a share of every row would fight over the same cache lines, and fewer columns than two panels
// leave too few column chunks to spread. Returns 1 for every other shape.
template <class A>
Index row_chunks(const GroupShape& s) {
  if (s.inner > 1 || s.groups >= 2 * kMaxPanel<A>) return 1;
  return chunk_count(s.outer / tuning::kMinChunkRows, s.size());
}

// Calls f(chunk, first_group, end_group) for every chunk, on the executor, for a pass reading
// `inputs` arrays (the executor's measure of the call's work).
template <class Exec, class F>
void for_chunks(const Exec& exec, const GroupShape& s, const Chunking& ch, Index inputs, F&& f) {
  const auto chunk = [&](Index k) {
    const Index g0 = chunk_begin(ch.units, ch.chunks, k) * ch.unit_width;
    const Index g1 = std::min(s.groups, chunk_begin(ch.units, ch.chunks, k + 1) * ch.unit_width);
    f(k, g0, g1);
  };
  exec.run(ch.chunks, chunk, inputs * s.size());
}

// One partial result per chunk, summed in chunk order: the fixed reduction tree of the parameter
// gradients. Each chunk's row starts on a cache line: the sweeps load and store it a packet at a
// time, and a row 16 bytes off a line (what malloc gives) splits every AVX-512 access in two.
template <class A>
struct ChunkPartials {
  Index size, stride;
  std::vector<A, Eigen::aligned_allocator<A>> values;
  ChunkPartials(Index chunks, Index partial)
      : size(partial), stride(round_up(partial, tuning::kCacheLineBytes / Index(sizeof(A)))),
        values(static_cast<std::size_t>(chunks * stride)) {}
  A* chunk(Index k) { return size ? values.data() + k * stride : nullptr; }
  // Adds the chunks to the first one, in chunk order (each element's sum is ((c0 + c1) + c2) + ...),
  // a whole row at a time: contiguous, so it vectorizes, where a loop over the chunks per element
  // strides a partial row apart at every step. One chunk is its own sum and takes no pass. Returns
  // the sum (null without partials).
  const A* merged(Index chunks) {
    A* first = chunk(0);
    for (Index k = 1; k < chunks; ++k) {
      const A* row = chunk(k);
      for (Index e = 0; e < size; ++e) first[e] += row[e];
    }
    return first;
  }

 private:
  static Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }
};

// Row shape, reduce and sweep fused: groups in batches of kBatchGroups while their runs fit L1,
// each batch's statistics then its sweep, with the next batch or group prefetched when the data
// lives beyond L2.
template <class Policy, class Exec>
void rows_fused(const Exec& exec, const GroupShape& s, const Policy& pol, const Chunking& ch,
                ChunkPartials<typename Policy::A>& part, Passes passes) {
  using A = typename Policy::A;
  using T = typename Policy::T;
  using Coef = typename Policy::Coef;
  constexpr Index R = tuning::kBatchGroups;
  const bool sweep = passes == Passes::Both;
  const bool batch = sweep && pol.batchable() && batch_groups<A, T>(s, Policy::inputs, pol.stream);
  const bool prefetch_batch = batch && prefetch_batches<T>(s, Policy::inputs);
  const bool prefetch_group = prefetch_groups<T>(s, Policy::inputs);
  for_chunks(exec, s, ch, Policy::inputs, [&](Index k, Index g0, Index g1) {
    A* partial = part.chunk(k);
    for (Index g = g0, rb = 1; g < g1; g += rb) {
      rb = batch && g1 - g >= R ? R : 1;
      // The next batch (or group) of this chunk, to prefetch: its runs sit rb runs further on.
      const Index next = sweep && (rb == R ? prefetch_batch : prefetch_group) && g + 2 * rb <= g1 ? rb * s.inner : 0;
      Coef c[R];
      typename Policy::Partial p[R]{};
      for (Index j = 0; j < rb; ++j) {
        c[j] = pol.start(g + j);
        for (Index o = 0; o < s.outer; ++o)
          p[j] = Policy::combine(p[j], pol.reduce_run(c[j], g + j, o, s.run_at(o, g + j), next, partial));
      }
      // Finished after the batch's last reduction: a finish is a latency chain (LayerNorm: a
      // division and a square root in double for rstd) that the next run's reduction hid poorly
      // when it came between them.
      for (Index j = 0; j < rb; ++j) c[j] = pol.finish(g + j, c[j], p[j]);
      if (!sweep) continue;
      for (Index o = 0; o < s.outer; ++o) {
        if (rb == R) pol.template sweep_runs<R>(g, o, c, next, partial);
        else pol.template sweep_runs<1>(g, o, c, next, partial);
      }
    }
    if (sweep && pol.stream) simd::stream_fence();
  });
}

// Row shape, sweep alone (given statistics): one sweep over the runs in memory order.
template <class Policy, class Exec>
void rows_sweep(const Exec& exec, const GroupShape& s, const Policy& pol, const Chunking& ch,
                ChunkPartials<typename Policy::A>& part) {
  const Index runs = s.outer * s.groups;
  const auto chunk = [&](Index k) {
    for (Index r = chunk_begin(runs, ch.chunks, k), end = chunk_begin(runs, ch.chunks, k + 1); r < end; ++r) {
      const Index o = r / s.groups, g = r % s.groups;
      const typename Policy::Coef c = pol.given(g);
      pol.template sweep_runs<1>(g, o, &c, Index(0), part.chunk(k));
    }
    if (pol.stream) simd::stream_fence();
  };
  exec.run(ch.chunks, chunk, Policy::inputs * s.size());
}

// The coefficients of a column panel, for a policy whose column kernels take them as they are (one
// Coef per column). Norm policies keep them as arrays of each field instead, what their column
// kernels read (norm_policies.hpp); either way a Columns holds the at most kPanelCols columns a
// panel or a narrow column shape has, with set(j, Coef) and get(j).
template <class A>
inline constexpr std::size_t kPanelCols = 2 * kMaxPanel<A>;
template <class A, class Coef>
struct CoefColumns {
  Coef c[kPanelCols<A>];
  void set(Index j, const Coef& v) { c[j] = v; }
  const Coef& get(Index j) const { return c[j]; }
};

// Column shape cut into chunks of whole panels: each panel's statistics, then its sweep, while the
// panel is in cache.
template <class Policy, class Exec>
void column_panels(const Exec& exec, const GroupShape& s, const Policy& pol, const Chunking& ch,
                   ChunkPartials<typename Policy::A>& part, Passes passes) {
  using A = typename Policy::A;
  constexpr std::size_t kPanel = kMaxPanel<A>;  // array bounds are size_t (see kMaxPanel)
  const Index panel = panel_width<A, typename Policy::T>(s.outer);
  // A panel within the budget is still in L2 for its sweep, where its statistics left it; a taller
  // one the sweep reads from further out, with its strips' prefetches (col_kernels.hpp). A sweep
  // alone (statistics given) of a panel within the budget takes none either: it measured slower
  // with them (InstanceNorm channels-last eval in the AVX2 build; docs/benchmarks.md).
  const bool in_l2 = s.outer * panel * Index(sizeof(typename Policy::T)) <= tuning::kPanelBudgetBytes;
  const Index sweep_fetch = in_l2 ? 0 : s.outer;
  for_chunks(exec, s, ch, Policy::inputs, [&](Index k, Index g0, Index g1) {
    for (Index p0 = g0; p0 < g1; p0 += panel) {
      const Index pc = std::min(panel, g1 - p0);
      typename Policy::Columns c;
      if (passes == Passes::Sweep) {
        for (Index j = 0; j < pc; ++j) c.set(j, pol.given(p0 + j));
      } else {
        typename Policy::Partial p[kPanel] = {};
        for (Index j = 0; j < pc; ++j) c.set(j, pol.start(p0 + j));
        pol.reduce_panel(c, p0, Index(0), s.outer, pc, p);
        for (Index j = 0; j < pc; ++j) c.set(j, pol.finish(p0 + j, c.get(j), p[j]));
      }
      if (passes != Passes::Reduce) pol.sweep_panel(c, p0, Index(0), s.outer, pc, part.chunk(k), sweep_fetch);
    }
    if (passes != Passes::Reduce && pol.stream) simd::stream_fence();
  });
}

// Column shape with few columns (fewer than kPanelCols), cut into chunks of whole rows: each
// chunk's partials of every column, combined in chunk order, then the sweep of each chunk.
template <class Policy, class Exec>
void column_row_chunks(const Exec& exec, const GroupShape& s, const Policy& pol, Index chunks,
                       ChunkPartials<typename Policy::A>& part, Passes passes) {
  using Partial = typename Policy::Partial;
  const Index G = s.groups;
  const auto first_row = [&](Index k) { return chunk_begin(s.outer, chunks, k); };
  typename Policy::Columns c;
  if (passes == Passes::Sweep) {
    for (Index g = 0; g < G; ++g) c.set(g, pol.given(g));
  } else {
    for (Index g = 0; g < G; ++g) c.set(g, pol.start(g));
    std::vector<Partial> p(static_cast<std::size_t>(chunks * G));
    const auto reduce = [&](Index k) {
      pol.reduce_panel(c, Index(0), first_row(k), first_row(k + 1) - first_row(k), G, p.data() + k * G);
    };
    exec.run(chunks, reduce, Policy::inputs * s.size());
    for (Index g = 0; g < G; ++g) {
      Partial total{};
      for (Index k = 0; k < chunks; ++k) total = Policy::combine(total, p[static_cast<std::size_t>(k * G + g)]);
      c.set(g, pol.finish(g, c.get(g), total));
    }
  }
  if (passes == Passes::Reduce) return;
  const auto sweep = [&](Index k) {
    // Every chunk's statistics ran first: the sweep reads its chunk from beyond L2 (unless the whole
    // shape fits), prefetched on into the next chunk.
    pol.sweep_panel(c, Index(0), first_row(k), first_row(k + 1) - first_row(k), G, part.chunk(k),
                    s.outer - first_row(k));
    if (pol.stream) simd::stream_fence();
  };
  exec.run(chunks, sweep, Policy::inputs * s.size());
}

}  // namespace detail

// Runs `passes` of a policy over every group of s (see the top of this file).
template <class Policy, class Exec>
void run_groups(const Exec& exec, const GroupShape& s, const Policy& pol, Passes passes) {
  using A = typename Policy::A;
  using T = typename Policy::T;
  if (s.size() == 0) return pol.empty(passes);
  const Index partial = passes == Passes::Reduce ? 0 : pol.partial_size();
  const detail::Chunking ch = detail::chunking<A, T>(s, partial);
  const Index row_chunks = detail::row_chunks<A>(s), chunks = row_chunks > 1 ? row_chunks : ch.chunks;
  detail::ChunkPartials<A> part(chunks, partial);
  if (s.inner > 1 && passes == Passes::Sweep) detail::rows_sweep(exec, s, pol, ch, part);
  else if (s.inner > 1) detail::rows_fused(exec, s, pol, ch, part, passes);
  else if (row_chunks > 1) detail::column_row_chunks(exec, s, pol, row_chunks, part, passes);
  else detail::column_panels(exec, s, pol, ch, part, passes);
  if (passes != Passes::Reduce) pol.merge_partials(part.merged(chunks));
}

}  // namespace normkit::core
