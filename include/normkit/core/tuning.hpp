// normkit/core/tuning.hpp — every tuning constant of the core, with the mechanism behind its value.
//
// The values are sizes of the memory hierarchy of the x86 and Arm server cores normkit targets
// (32-48 KiB L1d, 1-2 MiB L2 per core, 16 or 32 vector registers), and of the work a thread wake-up
// costs. None changes a result's bits except where said (chunking: the order partials are merged
// in is fixed by the shape, never by the thread count). What each choice measured on one machine
// is in docs/benchmarks.md, not here.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <fstream>
#include <string>

#include "simd.hpp"

namespace normkit::core::tuning {

using Eigen::Index;

// --- Chunks (iterate.hpp) ---------------------------------------------------------------------
// Elements per chunk, at least. Since the chunk count follows the shape, not the threads, each chunk
// costs every call (the serial one too) its setup and its partials' merge: 2^16 values (256 KiB of
// floats) leaves that negligible, and still cuts a mid-sized tensor into enough chunks to balance.
inline constexpr Index kMinElementsPerChunk = Index(1) << 16;
// Rows per chunk, at least, where a column shape is cut by rows: each such chunk finishes every
// column's statistics of its own (a shift, the moments, a merge with the other chunks'), which
// costs about as much as reading some 70 rows of the column. At 1024 rows that is under a tenth of
// the chunk's time (a GroupNorm (8, 64, 64, 320) sample had been cut into 20 chunks of 205 rows).
inline constexpr Index kMinChunkRows = 1024;
// Threads a call is spread over: at most one per this many values read. Handing chunks to another
// thread costs its wake-up and the misses on data the calling core last touched, tens of
// microseconds: about the time 2^18 values (1 MiB of floats) take in cache. Fewer threads change no
// result (the chunks, and the order their partials merge in, stay the same).
inline constexpr Index kMinElementsPerThread = Index(1) << 18;
// At most this many chunks: enough to keep 64 threads busy; more would only add partials to merge.
inline constexpr Index kMaxChunks = 64;
// Per-chunk partial results (backward's per-element parameter gradients) stay within a part of L2,
// since the merge reads them all once more: fewer chunks when the partials are long.
inline constexpr Index kPartialBytes = Index(1) << 20;

// --- Column panels (iterate.hpp, stats.hpp, col_kernels.hpp) -------------------------------------
// At most 16 packets of columns per panel, so that per-column state (shifts, sums, coefficients:
// a handful of arrays of this many values) fits on the stack and in L1.
inline constexpr Index kMaxPanelPackets = 16;
// A panel is swept two or three times (statistics, then normalize or dx): while it fits in half of
// a 1 MiB L2 the later sweeps read it from there.
inline constexpr Index kPanelBudgetBytes = Index(1) << 19;
// A block of panel rows is swept twice in a row (its shift, then its sums) and should stay in
// L1/L2 meanwhile: 64 KiB.
inline constexpr Index kPanelBlockBytes = Index(1) << 16;
// Column kernels walk strips of this many packets down the rows with their per-column sums and
// coefficients in registers (six per packet of columns at most): 4 with 32 registers (AVX-512),
// 2 with 16.
inline constexpr Index kStripPackets = simd::registers >= 32 ? 4 : 2;
// Kernels with per-row parameters (ColMajor LayerNorm/RMSNorm: w[r] and b[r] broadcast, dweight[r]
// and dbias[r] summed across the strip, at every row of every strip) walk strips of 4 packets with
// 16 registers too: that per-row work is per strip, and wider strips do it half as often and read
// twice the bytes of each row per visit. Their per-column state then no longer fits in 16
// registers; the spilled part is reloaded from L1, which measured cheaper than the narrower strips
// (docs/benchmarks.md). Kernels without per-row work keep kStripPackets: spills only cost them.
inline constexpr Index kRowParamStripPackets = 4;
// ... one small block of rows at a time, every strip of a block before the next block
// (col_kernels.hpp), where a strip's walk down all the rows defeats the caches: 2 KiB of each array
// the kernel reads or writes, and at least 4 rows.
//  - Contiguous rows whose strips read a line or less of each (AVX2 floats: 64 bytes): a strip's
//    walk is a stream hitting one line in every few, at a stride the hardware prefetchers do not
//    follow across pages, and the next strip fetches the lines in between again from memory. A
//    2 KiB block's lines are all requested within a few hundred cycles, as a nearly ascending
//    stream, and stay in L1 for the block's other strips.
//  - Rows kL1AliasBytes (4 KiB) or more apart: every row of a strip's walk is in a new page, where
//    the prefetchers (which stay within a page) cannot run ahead, and at multiples of 4 KiB a
//    strip's lines all fall in the same few sets of a 32-48 KiB L1d (8-12 ways of 4 KiB), so a
//    walk of more than a few rows evicts the lines the next strip was to read.
// Otherwise (wider strips, or a slice of rows a few lines apart) each strip walks all the rows:
// short blocks measured slower there, by the reload of the strip's per-column state (up to seven
// packets per packet of columns) at every block. The same reload sets the minimum of 4 rows.
inline constexpr Index kStripBlockBytes = Index(1) << 11;
inline constexpr Index kStripBlockMinRows = 4;
inline constexpr Index kL1AliasBytes = Index(4) << 10;
// A strip's walk down rows wider than the strip reads a few lines of each row, a stride the
// hardware prefetchers do not follow (they look for consecutive lines within a 4 KiB page), so
// every line comes at memory's full latency, blocks of rows or not. Each strip therefore
// prefetches its own lines this far ahead into L2 (64 rows of a 256-byte AVX-512 strip, 256 of a
// 64-byte AVX2 strip): enough lines in flight to cover that latency at memory's bandwidth; half of
// it was measurably short of that, twice as much no better (docs/benchmarks.md).
inline constexpr Index kStripPrefetchBytes = Index(16) << 10;

// --- Rows (iterate.hpp) --------------------------------------------------------------------------
// Consecutive groups of a row shape go through the sweep this many at a time, so that each packet
// of per-element parameters is loaded (and of their gradients loaded and stored) once per batch.
inline constexpr Index kBatchGroups = 4;
// ... while the batch's inputs fit in a 32 KiB L1d: the sweep must find them where the statistics
// pass left them, or it trades the parameter loads for misses.
inline constexpr Index kBatchBytes = Index(1) << 15;
// Inputs this large (4 MiB) no longer sit in L2 between the statistics pass and the sweep: the
// backward sweep over one batch then prefetches the next batch into L2 (the hardware prefetcher
// does not, as the sweep only touches lines already in L1). Forward sweeps do not: they are bound
// by their stores, and the prefetches (eight per packet in the residual forward: four rows of x
// and r) compete with those stores for the core's outstanding-miss slots.
inline constexpr Index kBeyondL2Bytes = Index(4) << 20;
// A group swept alone (a row too long to batch, an NCHW channel) has the next group prefetched into
// L2 during its sweep when the call's inputs do not fit in the L3 the core shares (l3_bytes(),
// below), and this group and the next fit in a 1 MiB L2 with all of their inputs. Even when the
// next row is the next address the hardware prefetcher does not do it: the sweep reads only lines
// already in L1/L2, so nothing misses and the L2 streamer does not run ahead; the next statistics
// pass would start from memory, while the sweep's streaming stores leave read bandwidth idle. When
// the inputs do fit in L3 (a model's activations between layers, a benchmark's loop), the next
// statistics pass finds them there at a fraction of DRAM's latency, which the L2 streamer hides
// once that pass misses, and the prefetches only add requests that compete with the sweep's stores
// for the core's outstanding-miss slots (slower on a 32 MiB L3 for 32 MiB inputs, faster for 128
// MiB ones: docs/benchmarks.md). So the threshold is the machine's L3, not a constant.
inline constexpr Index kL2Bytes = Index(1) << 20;

// The L3 a core shares, read once: how much of a tensor a call finds in cache when the caller (or
// the call before) has just touched it. It differs by machine for the same ISA (8 MiB per Zen 1
// core complex, 32 MiB per Zen 4 one), hence read at run time from Linux's sysfs (the size of one
// instance, what a core can use; glibc's sysconf reported the whole package, 64 MiB, on an EPYC VM
// whose sysfs says 8). Where there is none (not Linux, no L3 listed), kDefaultL3Bytes, the fixed
// threshold this replaced.
inline constexpr Index kDefaultL3Bytes = Index(8) << 20;
namespace detail {
// Linux's cache size text: "8192K", "32M", or bytes; 0 if it is none of these.
inline Index parse_cache_size(const std::string& text) {
  Index value = 0;
  std::size_t k = 0;
  for (; k < text.size() && text[k] >= '0' && text[k] <= '9'; ++k) value = value * 10 + (text[k] - '0');
  if (k == 0) return 0;
  const std::string unit = text.substr(k);
  if (unit.empty()) return value;
  if (unit[0] == 'K' || unit[0] == 'k') return value << 10;
  if (unit[0] == 'M') return value << 20;
  if (unit[0] == 'G') return value << 30;
  return 0;
}
inline Index read_l3_bytes() {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level)) break;
    if (level == 3 && size_file >> size) return parse_cache_size(size);
  }
  return 0;
}
}  // namespace detail
inline Index l3_bytes() {
  static const Index bytes = [] {
    const Index read = detail::read_l3_bytes();
    return read > 0 ? read : kDefaultL3Bytes;
  }();
  return bytes;
}

// --- Stores (row_kernels.hpp, col_kernels.hpp) ---------------------------------------------------
// Outputs of at least 8 MiB are written with non-temporal stores: they would not stay in cache, and
// streaming saves the read-for-ownership of every line. The whole output counts, not one call's part
// of it (per-sample calls: iterate.hpp, stream_output).
inline constexpr Index kStreamBytes = Index(8) << 20;
// Batched sweeps are not used with streaming stores of packets narrower than a 64-byte line
// (16-bit data): several rows' half-written lines interleave in the write-combining buffers. For
// the same reason a sweep streams whole lines only (fusion.hpp: stream_span).
inline constexpr Index kCacheLineBytes = 64;
// Loads and stores are matched by their addresses' low 12 bits before the whole address is known:
// a load that matches an older store still in flight waits on it (4K aliasing; Intel and AMD
// alike), so a scratch row takes its run's offset within this many bytes (fusion.hpp: scratch_row).
inline constexpr std::uintptr_t kAliasBytes = 4096;
// A sweep that loads a parameter array (weight, bias) at the rate it stores an output waits on its
// own stores when the parameters' offset within a page trails an output row's by a little: each
// packet's parameter load then matches a store of a few packets before, still in flight. Measured
// (LayerNorm forward_add, AVX2 build, Zen 4; h and y moved in 16-byte steps against the weight):
// bfloat16 2048x4096 took up to 4x as long with the weight 16 to 112 bytes behind h and y, float
// 1024x4096 up to 2.7x with it 16 to 96 bytes behind, and float 256x4096 (not streamed) 2x with it
// up to 80 bytes behind or within the same 64-byte line ahead (docs/benchmarks.md). A placement
// is safe where every output row's offset is at least kAliasAheadBytes behind the parameters' (two
// lines: the same line ahead was slow too) and at least kAliasTrailBytes ahead of them (over three
// times the widest window measured: how far back a load meets a store grows with the stores in
// flight, which wider packets and slower stores increase) (fusion.hpp: untrailed_offset).
inline constexpr std::uintptr_t kAliasAheadBytes = 128;
inline constexpr std::uintptr_t kAliasTrailBytes = 384;

// --- Softmax (softmax_kernels.hpp) ---------------------------------------------------------------
// The online max-and-sum pass takes the max of this many packets (of a run), or rows (of a panel
// strip), before rescaling its running sum by exp(old max - new max): one extra exp per block
// instead of one per packet, so 1 + 1/4 exps per value, while the block's four exps stay
// independent (they fill the FMA pipes) and the block's values stay in registers.
inline constexpr Index kSoftmaxBlock = 4;
// Softmax, log-softmax and cross-entropy rows of up to this many bytes (of the accumulation type)
// take their max first, then one exponential per value: each row's exponentials go to a per-thread
// scratch row (run_exp_sum, kept for the thread's next calls), which the softmax and cross-entropy
// sweeps read back instead of taking a second exponential. Up to this size the row and its
// scratch fit together in the smallest shared L3 we run on (8 MiB), so the second pass and the
// sweep read them from cache; a longer row would send them to memory and back, and would keep
// that much memory per thread.
inline constexpr Index kSoftmaxScratchBytes = Index(4) << 20;
// run_exp_sum of double keeps this many compensated sums, packets taking turns (float sums in
// double instead, simd::WideSum): a sum's TwoSum chains three dependent adds, which two packets'
// exponentials outlast; with four, the sums and their compensations no longer fit AVX2's 16
// registers beside the exponential's constants and were spilled to the stack and reloaded every
// packet (measured with float, before its sums went to double).
inline constexpr int kSoftmaxExpSums = 2;
// simd::UnitSum (softmax's sum of exponentials in float, errors kept) moves its float sums to double
// every this many packets. Its bound on the sum's relative error grows with the block (c, the sum of
// the block's rounding errors, is itself a float sum of that many terms); a flush costs about as
// much as two packets' widening into double.
inline constexpr int kUnitSumFlush = 16;

}  // namespace normkit::core::tuning
