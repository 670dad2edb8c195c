// tests/mpi/sync_batch_norm_test.cpp — SyncBatchNorm under mpirun (2 and 3 ranks): every rank holds
// the same full batch, takes its slice of samples, and compares what SyncBatchNorm gives on the
// slice with what one BatchNorm gives on the whole batch (BatchNorm itself is checked against an
// independent float64 reference in tests/batch_norm_test.cpp).
//
// Tolerances: the statistics are the same sums merged in another order, so they differ from the
// single BatchNorm's by a few ulps of the accumulation type A:
//   y, dx (in T)        : |d| <= tol * max(1, |ref|), tol = 1e-12 (double), 2e-5 (float: a few ulps
//                         of mean and rstd times |xhat| <= ~5), 2^-7 (bfloat16: one ulp of the
//                         output, when the A value sits near a rounding boundary);
//   running statistics  : relative 1e-12 (double), 1e-5 (float accumulation);
//   dweight, dbias sums : relative to the channel's sum of |dy| (1 + |xhat|), the scale of their
//                         rounding: 1e-13 (double), 2e-5 (float accumulation).
// Bits: statistics and running statistics must be identical on every rank (gathered and compared).
// In place (forward(x, x), backward(x, dy, stats, dy)) gives the out-of-place bits on each rank.
// Tests call collectives, so every rank takes the same path: CHECK only, never REQUIRE.
#include <normkit/mpi.hpp>
#include <normkit/normkit.hpp>

#include <mpi.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Index = Eigen::Index;
using normkit::BatchNorm;
using normkit::BatchNormOptions;
using normkit::SyncBatchNorm;

int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int ranks() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

template <class T>
double out_tol() {
  if (std::is_same_v<T, double>) return 1e-12;
  if (std::is_same_v<T, float>) return 2e-5;
  return 1.0 / 128;
}
template <class A>
double stat_tol() {
  return std::is_same_v<A, double> ? 1e-12 : 1e-5;
}
template <class A>
double sum_tol() {
  return std::is_same_v<A, double> ? 1e-13 : 2e-5;
}
template <class T>
const char* type_name() {
  if (std::is_same_v<T, double>) return "double";
  if (std::is_same_v<T, float>) return "float";
  return "bfloat16";
}

// Samples per rank. kind 0: 3 each; 1: uneven, rank 1 empty; 2: rank 0 empty, uneven.
std::vector<Index> split(int kind) {
  std::vector<Index> n(static_cast<std::size_t>(ranks()));
  for (std::size_t r = 0; r < n.size(); ++r) {
    const Index ri = static_cast<Index>(r);
    n[r] = kind == 0 ? 3 : kind == 1 ? (r == 1 ? 0 : 2 * ri + 1) : (r == 0 ? 0 : 3 + ri);
  }
  return n;
}

// Per-channel means far from 0 (3 + c % 8, scaled by mean0) and different spreads, so that a wrong
// merge or a channel mix-up shows; the scales repeat every 8 channels to keep |xhat| and the
// cancellation in dx alike in every channel (the tolerances assume so).
template <class T>
void fill_channels(T* v, Index size, Index C, Index channel_stride, std::uint32_t seed, double mean0, double spread) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index i = 0; i < size; ++i) {
    const double c = static_cast<double>((i / channel_stride) % C % 8);
    v[i] = static_cast<T>(mean0 * (3.0 + c) + spread * (0.5 + 0.3 * c) * normal(rng));
  }
}

template <class S>
double at(const S* p, Index i) {
  return static_cast<double>(p[i]);
}

// max over i of |a - b| / max(1, |b|)
template <class S, class R>
double max_rel(const S* a, const R* b, Index n) {
  double worst = 0;
  for (Index i = 0; i < n; ++i)
    worst = std::max(worst, std::abs(at(a, i) - at(b, i)) / std::max(1.0, std::abs(at(b, i))));
  return worst;
}

// Whether `bytes` bytes at p are the same on every rank (compared with rank 0's).
bool same_on_all_ranks(const void* p, std::size_t bytes) {
  std::vector<unsigned char> all(bytes * static_cast<std::size_t>(ranks()));
  MPI_Allgather(p, static_cast<int>(bytes), MPI_BYTE, all.data(), static_cast<int>(bytes), MPI_BYTE, MPI_COMM_WORLD);
  bool same = true;
  for (int r = 1; r < ranks(); ++r)
    same = same && std::memcmp(all.data(), all.data() + bytes * std::size_t(r), bytes) == 0;
  return same;
}

template <class P>
void set_params(P* w, P* b, Index C) {
  for (Index c = 0; c < C; ++c)
    w[c] = static_cast<P>(0.5 + 0.25 * double(c % 8)), b[c] = static_cast<P>(0.1 * double(c % 8) - 0.2);
}

struct Case {
  bool channels_last;
  int split_kind;
  Index C, H, W;
  bool threaded;
};

// A rank may hold no samples: its tensors then have no storage (null data), which memcmp and
// memcpy must not be given even for 0 bytes.
template <class T>
bool same_bytes(const T* a, const T* b, Index n) {
  return n == 0 || std::memcmp(a, b, sizeof(T) * static_cast<std::size_t>(n)) == 0;
}

// Two training steps (forward + backward) of SyncBatchNorm on this rank's slice against one
// BatchNorm on the whole batch; then eval, backward of the synced stats after eval(). A second
// SyncBatchNorm takes the same steps in place.
template <class T, class P>
void check_case(const Case& k) {
  using A = normkit::accum_t<T>;
  using Tensor4 = Eigen::Tensor<T, 4, Eigen::RowMajor>;
  using Map4 = Eigen::TensorMap<Tensor4>;
  const std::vector<Index> counts = split(k.split_kind);
  Index N = 0, offset = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) offset += int(r) < rank() ? counts[r] : 0, N += counts[r];
  const Index n_local = counts[std::size_t(rank())], C = k.C, per_sample = k.C * k.H * k.W;
  const auto dims = [&](Index n) {
    return k.channels_last ? std::array<Index, 4>{n, k.H, k.W, C} : std::array<Index, 4>{n, C, k.H, k.W};
  };
  const Index channel_stride = k.channels_last ? 1 : k.H * k.W;
  INFO(type_name<T>() << (std::is_same_v<T, P> ? "" : " with float parameters") << ", " << ranks() << " ranks, "
                      << (k.channels_last ? "channels-last" : "NCHW") << ", split kind " << k.split_kind << ", N " << N
                      << " (this rank " << n_local << "), C " << C << ", " << (k.threaded ? "2 threads" : "serial")
                      << ", rank " << rank());

  BatchNormOptions options;
  options.channel_axis = k.channels_last ? -1 : 1;
  BatchNorm<T, P> whole(C, options);
  SyncBatchNorm<T, P> sync(C, MPI_COMM_WORLD, options), sync_in_place(C, MPI_COMM_WORLD, options);
  set_params(whole.weight().data(), whole.bias().data(), C);
  set_params(sync.weight().data(), sync.bias().data(), C);
  set_params(sync_in_place.weight().data(), sync_in_place.bias().data(), C);
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);

  Tensor4 x(dims(N)), dy(dims(N)), y(dims(N)), dx(dims(N));
  Tensor4 y_local(dims(n_local)), dx_local(dims(n_local)), in_place(dims(n_local));
  Map4 io(in_place.data(), dims(n_local));
  normkit::NormStats<T> stats;
  for (int step = 0; step < 3; ++step) {
    const bool after_eval = step == 2;  // forward in training, eval(), then backward: still synced
    INFO("step " << step);
    fill_channels(x.data(), x.size(), C, channel_stride, 11u + unsigned(step), 1.0, 1.0);
    fill_channels(dy.data(), dy.size(), C, channel_stride, 101u + unsigned(step), 0.1, 1.0);
    const Map4 x_local(x.data() + offset * per_sample, dims(n_local));
    const Map4 dy_local(dy.data() + offset * per_sample, dims(n_local));

    whole.train(), sync.train(), sync_in_place.train();
    const normkit::NormStats<T> ref = whole.forward(x, y);
    stats = k.threaded ? sync.forward(device, x_local, y_local) : sync.forward(x_local, y_local);
    std::copy_n(x_local.data(), n_local * per_sample, in_place.data());
    const normkit::NormStats<T> stats_ip = k.threaded ? sync_in_place.forward(device, io, io)
                                                      : sync_in_place.forward(io, io);
    CHECK(same_bytes(in_place.data(), y_local.data(), y_local.size()));
    CHECK(same_bytes(stats_ip.mean.data(), stats.mean.data(), C));
    CHECK(same_bytes(stats_ip.mean_lo.data(), stats.mean_lo.data(), C));
    CHECK(same_bytes(stats_ip.rstd.data(), stats.rstd.data(), C));
    CHECK(same_bytes(sync_in_place.running_mean().data(), sync.running_mean().data(), C));
    CHECK(same_bytes(sync_in_place.running_var().data(), sync.running_var().data(), C));
    CHECK(stats.source == normkit::StatsSource::Synced);
    CHECK(max_rel(y_local.data(), y.data() + offset * per_sample, y_local.size()) <= out_tol<T>());
    CHECK(max_rel(stats.mean.data(), ref.mean.data(), C) <= stat_tol<A>());
    CHECK(max_rel(stats.rstd.data(), ref.rstd.data(), C) <= stat_tol<A>());
    CHECK(same_on_all_ranks(stats.mean.data(), sizeof(A) * std::size_t(C)));
    CHECK(same_on_all_ranks(stats.mean_lo.data(), sizeof(A) * std::size_t(C)));
    CHECK(same_on_all_ranks(stats.rstd.data(), sizeof(A) * std::size_t(C)));
    CHECK(max_rel(sync.running_mean().data(), whole.running_mean().data(), C) <= stat_tol<A>());
    CHECK(max_rel(sync.running_var().data(), whole.running_var().data(), C) <= stat_tol<A>());
    CHECK(same_on_all_ranks(sync.running_mean().data(), sizeof(P) * std::size_t(C)));
    CHECK(same_on_all_ranks(sync.running_var().data(), sizeof(P) * std::size_t(C)));
    CHECK(sync.num_batches_tracked() == whole.num_batches_tracked());

    if (after_eval) whole.eval(), sync.eval(), sync_in_place.eval();
    const normkit::NormGrads<P> g_ref = whole.backward(x, dy, ref, dx);
    const normkit::NormGrads<P> g = k.threaded ? sync.backward(device, x_local, dy_local, stats, dx_local)
                                               : sync.backward(x_local, dy_local, stats, dx_local);
    std::copy_n(dy_local.data(), n_local * per_sample, in_place.data());
    const normkit::NormGrads<P> g_ip = k.threaded ? sync_in_place.backward(device, x_local, io, stats_ip, io)
                                                  : sync_in_place.backward(x_local, io, stats_ip, io);
    CHECK(same_bytes(in_place.data(), dx_local.data(), dx_local.size()));
    CHECK(same_bytes(g_ip.weight.data(), g.weight.data(), C));
    CHECK(same_bytes(g_ip.bias.data(), g.bias.data(), C));
    CHECK(max_rel(dx_local.data(), dx.data() + offset * per_sample, dx_local.size()) <= out_tol<T>());
    // The ranks' dweight/dbias add up to the whole batch's.
    std::vector<double> mine(std::size_t(2 * C)), summed(mine.size()), scale(std::size_t(C), 0.0);
    for (Index c = 0; c < C; ++c)
      mine[std::size_t(c)] = at(g.weight.data(), c), mine[std::size_t(C + c)] = at(g.bias.data(), c);
    MPI_Allreduce(mine.data(), summed.data(), int(mine.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    for (Index i = 0; i < x.size(); ++i) {
      const Index c = (i / channel_stride) % C;
      const double xhat = (at(x.data(), i) - double(ref.mean(c)) - double(ref.mean_lo(c))) * double(ref.rstd(c));
      scale[std::size_t(c)] += std::abs(at(dy.data(), i)) * (1.0 + std::abs(xhat));
    }
    for (Index c = 0; c < C; ++c) {
      CHECK(std::abs(summed[std::size_t(c)] - at(g_ref.weight.data(), c)) <= sum_tol<A>() * scale[std::size_t(c)]);
      CHECK(std::abs(summed[std::size_t(C + c)] - at(g_ref.bias.data(), c)) <= sum_tol<A>() * scale[std::size_t(c)]);
    }
  }
}

template <class T, class P>
void check_all_cases() {
  for (const bool channels_last : {false, true})
    for (const int kind : {0, 1, 2}) check_case<T, P>(Case{channels_last, kind, 5, 3, 4, false});
}

}  // namespace

TEST_CASE("SyncBatchNorm equals one BatchNorm on the concatenated batch (float)", "[mpi]") {
  check_all_cases<float, float>();
}
TEST_CASE("SyncBatchNorm equals one BatchNorm on the concatenated batch (double)", "[mpi]") {
  check_all_cases<double, double>();
}
TEST_CASE("SyncBatchNorm equals one BatchNorm on the concatenated batch (bfloat16, float params)", "[mpi]") {
  check_all_cases<Eigen::bfloat16, float>();
}

// Large enough (>= 2 * 32768 values per rank) that the core cuts the work into 2 chunks: the
// moments and sums of both chunked column paths (channels-last) and of the row shape.
TEST_CASE("SyncBatchNorm on a thread pool, chunked paths", "[mpi]") {
  check_case<float, float>(Case{false, 0, 6, 80, 80, true});
  check_case<float, float>(Case{true, 0, 5, 80, 80, true});
  check_case<float, float>(Case{true, 0, 600, 8, 10, true});  // wide: chunks of columns
}

// Eval mode communicates nothing: only rank 0 calls forward and backward (a collective would hang
// and the ctest timeout would fail the test). With running statistics it equals BatchNorm in eval
// with the same state; without tracking it normalizes by the local batch, as BatchNorm does.
TEST_CASE("SyncBatchNorm in eval mode is local", "[mpi]") {
  for (const bool track : {true, false}) {
    BatchNormOptions options;
    options.track_running_stats = track;
    SyncBatchNorm<float> sync(4, MPI_COMM_WORLD, options);
    BatchNorm<float> local(4, options);
    const std::vector<float> mean{1, 2, 3, 4}, var{0.5f, 1, 2, 4};
    if (track)
      sync.set_running_mean(mean), sync.set_running_var(var), local.set_running_mean(mean), local.set_running_var(var);
    sync.eval(), local.eval();
    if (rank() == 0) {
      Eigen::Tensor<float, 3, Eigen::RowMajor> x(2, 4, 5), dy(2, 4, 5), y(2, 4, 5), y_ref(2, 4, 5), dx(2, 4, 5),
          dx_ref(2, 4, 5);
      fill_channels(x.data(), x.size(), 4, 5, 7u, 1.0, 1.0);
      fill_channels(dy.data(), dy.size(), 4, 5, 8u, 0.0, 1.0);
      const auto s = sync.forward(x, y);
      const auto s_ref = local.forward(x, y_ref);
      CHECK(s.source == s_ref.source);
      CHECK(max_rel(y.data(), y_ref.data(), y.size()) == 0);
      sync.backward(x, dy, s, dx);
      local.backward(x, dy, s_ref, dx_ref);
      CHECK(max_rel(dx.data(), dx_ref.data(), dx.size()) == 0);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

// A check that fails on one rank throws on every rank, and no rank is left in a collective: a
// forward that works follows on every rank.
TEST_CASE("SyncBatchNorm: a mismatched C throws shape_error on every rank", "[mpi]") {
  const int last = ranks() - 1;
  using Tensor = Eigen::Tensor<float, 4, Eigen::RowMajor>;
  {  // num_features differs across ranks (each x matches its own layer)
    const Index C = rank() == last ? 4 : 3;
    SyncBatchNorm<float> sync(C, MPI_COMM_WORLD);
    Tensor x(2, C, 2, 2), y(2, C, 2, 2);
    fill_channels(x.data(), x.size(), C, 4, 3u, 1.0, 1.0);
    CHECK_THROWS_AS(sync.forward(x, y), normkit::shape_error);
    CHECK_THROWS_WITH(sync.forward(x, y), Catch::Contains("num_features differs across ranks"));
  }
  SyncBatchNorm<float> sync(3, MPI_COMM_WORLD);
  {  // one rank's x has the wrong C for the layer
    const Index C = rank() == last ? 4 : 3;
    Tensor x(2, C, 2, 2), y(2, C, 2, 2);
    fill_channels(x.data(), x.size(), C, 4, 3u, 1.0, 1.0);
    CHECK_THROWS_AS(sync.forward(x, y), normkit::shape_error);
  }
  {  // one value per channel over all ranks: invalid_argument everywhere
    Tensor x(rank() == 0 ? 1 : 0, 3, 1, 1), y(x.dimensions());
    x.setConstant(1.0f);
    CHECK_THROWS_AS(sync.forward(x, y), std::invalid_argument);
  }
  {  // y of the wrong shape on rank 0 only
    Tensor x(2, 3, 2, 2), y(rank() == 0 ? 3 : 2, 3, 2, 2);
    fill_channels(x.data(), x.size(), 3, 4, 3u, 1.0, 1.0);
    CHECK_THROWS_AS(sync.forward(x, y), normkit::shape_error);
  }
  CHECK(sync.num_batches_tracked() == 0);  // nothing was updated by the failed calls
  Tensor x(2, 3, 2, 2), y(2, 3, 2, 2), dy(2, 3, 2, 2), dx(2, 3, 2, 2), dx_bad(2, 3, 2, rank() == last ? 3 : 2);
  fill_channels(x.data(), x.size(), 3, 4, 5u + unsigned(rank()), 1.0, 1.0);
  dy.setConstant(1.0f);
  const auto stats = sync.forward(x, y);  // every rank gets here, so all collectives paired up
  CHECK(sync.num_batches_tracked() == 1);
  CHECK_THROWS_AS(sync.backward(x, dy, stats, dx_bad), normkit::shape_error);  // dx wrong on the last rank
  CHECK_NOTHROW(sync.backward(x, dy, stats, dx));
}

// The public moments across processes, as a user would build a distributed statistic: each rank's
// moments of its slice, all-gathered and merged in rank order, equal the moments of the whole to
// rounding and are the same bits on every rank.
TEST_CASE("Moments merged across ranks", "[mpi]") {
  const Index per_rank = 1000 + 37 * rank();
  std::vector<Index> sizes(static_cast<std::size_t>(ranks()));
  MPI_Allgather(&per_rank, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
  std::vector<double> all;
  for (int r = 0; r < ranks(); ++r) {
    std::vector<double> part(static_cast<std::size_t>(sizes[std::size_t(r)]));
    fill_channels(part.data(), Index(part.size()), 1, 1, 40u + unsigned(r), 1e4, 1.0);  // mean 3e4, std 0.5
    all.insert(all.end(), part.begin(), part.end());
  }
  Index offset = 0;
  for (int r = 0; r < rank(); ++r) offset += sizes[std::size_t(r)];
  const normkit::Moments<double> mine = normkit::moments_of<double>(all.data() + offset, per_rank);
  const double packed[4] = {mine.mean, mine.mean_lo, mine.m2, double(mine.exp2)};
  std::vector<double> gathered(4 * std::size_t(ranks()));
  MPI_Allgather(packed, 4, MPI_DOUBLE, gathered.data(), 4, MPI_DOUBLE, MPI_COMM_WORLD);
  normkit::Moments<double> merged;
  for (int r = 0; r < ranks(); ++r) {
    const double* v = gathered.data() + 4 * r;
    merged = normkit::merge_moments(merged,
                                    normkit::Moments<double>{sizes[std::size_t(r)], v[0], v[1], v[2], int(v[3])});
  }
  long double sum = 0, sq = 0;  // independent two-pass reference in long double
  for (const double v : all) sum += v;
  const long double mean = sum / static_cast<long double>(all.size());
  for (const double v : all) sq += (v - mean) * (v - mean);
  CHECK(merged.count == Index(all.size()));
  CHECK(std::abs(normkit::mean_of(merged) - double(mean)) <= 1e-15 * double(mean));
  CHECK(std::abs(normkit::variance_of(merged, true) - double(sq / (all.size() - 1))) <=
        1e-12 * double(sq / (all.size() - 1)));
  const double bits[3] = {merged.mean, merged.mean_lo, merged.m2};
  CHECK(same_on_all_ranks(bits, sizeof bits));
}
