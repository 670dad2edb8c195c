// bench_mpi — what SyncBatchNorm's communication costs: SyncBatchNorm on each rank's (N, C, H, W)
// slice against BatchNorm on the same slice, both timed on all ranks at once (so memory bandwidth
// is shared alike), and the collectives alone. A plain timing program rather than Google Benchmark:
// every rank must run the same number of iterations, which Google Benchmark decides per process.
//
//   mpirun -n 2 build/bench/normkit_bench_mpi [N C H W] [repetitions]     (default 32 64 56 56, 20)
//
// Each repetition starts with a barrier; its time is the slowest rank's (a collective waits for the
// last), and the report gives the fastest repetition: on a machine shared with other work the
// slower ones measure that work (medians moved by 4x between runs on the 2-core dev VM, minima by
// ~10%). Single-threaded per rank.
#include <normkit/mpi.hpp>
#include <normkit/normkit.hpp>

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

using Index = Eigen::Index;
using Tensor4 = Eigen::Tensor<float, 4, Eigen::RowMajor>;

int rank_, ranks_;

// The fastest repetition of f() (each timed on the slowest rank), in microseconds.
template <class F>
double best_us(int repetitions, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < repetitions; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    f();
    double mine = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count(), slowest = 0;
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t.push_back(slowest);
  }
  return *std::min_element(t.begin(), t.end());
}

// The collectives of one SyncBatchNorm forward (3 int64, then 4C floats per rank) and backward
// (2C + 3 doubles per rank), alone.
double forward_collectives_us(Index C, int repetitions) {
  std::int64_t head[3] = {0, C, 1}, heads[3 * 64];
  std::vector<float> send(std::size_t(4 * C)), recv(send.size() * std::size_t(ranks_));
  return best_us(repetitions, [&] {
    MPI_Allgather(head, 3, MPI_INT64_T, heads, 3, MPI_INT64_T, MPI_COMM_WORLD);
    MPI_Allgather(send.data(), int(4 * C), MPI_FLOAT, recv.data(), int(4 * C), MPI_FLOAT, MPI_COMM_WORLD);
  });
}
double backward_collective_us(Index C, int repetitions) {
  std::vector<double> send(std::size_t(2 * C + 3)), recv(send.size() * std::size_t(ranks_));
  return best_us(repetitions, [&] {
    MPI_Allgather(send.data(), int(send.size()), MPI_DOUBLE, recv.data(), int(send.size()), MPI_DOUBLE, MPI_COMM_WORLD);
  });
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
  if (ranks_ > 64) MPI_Abort(MPI_COMM_WORLD, 2);
  Index d[4] = {32, 64, 56, 56};
  for (int i = 0; i < 4 && i + 1 < argc; ++i) d[i] = std::atol(argv[i + 1]);
  const int repetitions = argc > 5 ? std::atoi(argv[5]) : 20;
  const Index C = d[1];

  Tensor4 x(d[0], d[1], d[2], d[3]), y(x.dimensions()), dy(x.dimensions()), dx(x.dimensions());
  std::mt19937 rng(1 + unsigned(rank_));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = 2.0f + normal(rng), dy.data()[i] = normal(rng);

  // SyncBatchNorm on MPI_COMM_SELF runs the same split code (statistics, collectives, normalize)
  // with collectives that return at once: the difference to BatchNorm is the cost of the split,
  // the difference to SyncBatchNorm on MPI_COMM_WORLD the cost of communicating.
  normkit::BatchNorm<float> local(C);
  normkit::SyncBatchNorm<float> alone(C, MPI_COMM_SELF), sync(C, MPI_COMM_WORLD);
  normkit::NormStats<float> s_local = local.forward(x, y), s_alone = alone.forward(x, y), s_sync = sync.forward(x, y);
  local.backward(x, dy, s_local, dx), alone.backward(x, dy, s_alone, dx), sync.backward(x, dy, s_sync, dx);  // warm up

  double fwd[3], bwd[3];                     // BatchNorm, SyncBatchNorm alone, SyncBatchNorm over the ranks
  for (int round = 0; round < 3; ++round) {  // interleaved, so that drifting load hits all three alike
    const double f[3] = {best_us(repetitions, [&] { s_local = local.forward(x, y); }),
                         best_us(repetitions, [&] { s_alone = alone.forward(x, y); }),
                         best_us(repetitions, [&] { s_sync = sync.forward(x, y); })};
    const double b[3] = {best_us(repetitions, [&] { local.backward(x, dy, s_local, dx); }),
                         best_us(repetitions, [&] { alone.backward(x, dy, s_alone, dx); }),
                         best_us(repetitions, [&] { sync.backward(x, dy, s_sync, dx); })};
    for (int i = 0; i < 3; ++i)
      fwd[i] = round ? std::min(fwd[i], f[i]) : f[i], bwd[i] = round ? std::min(bwd[i], b[i]) : b[i];
  }
  const double coll_fwd = forward_collectives_us(C, 200), coll_bwd = backward_collective_us(C, 200);

  if (rank_ == 0) {
    std::printf(
        "SyncBatchNorm vs BatchNorm, float, (%ld, %ld, %ld, %ld) per rank, %d ranks, 1 thread each, "
        "best of %d x 3 (slowest rank)\n",
        long(d[0]), long(d[1]), long(d[2]), long(d[3]), ranks_, repetitions);
    std::printf(
        "          BatchNorm   Sync on SELF   Sync on WORLD   split cost       communication     collectives alone\n");
    const char* names[2] = {"forward ", "backward"};
    for (int k = 0; k < 2; ++k) {
      const double* t = k ? bwd : fwd;
      std::printf("%s  %7.0f us  %10.0f us  %11.0f us  %+6.0f us (%+5.1f%%)  %+6.0f us (%+5.1f%%)  %8.1f us\n",
                  names[k], t[0], t[1], t[2], t[1] - t[0], 100.0 * (t[1] - t[0]) / t[0], t[2] - t[1],
                  100.0 * (t[2] - t[1]) / t[0], k ? coll_bwd : coll_fwd);
    }
    std::printf(
        "\ncollectives alone by C (best of 200): forward = 2 all-gathers (3 int64; 4C floats per rank), "
        "backward = 1 all-gather (2C + 3 doubles per rank)\n");
  }
  for (const Index c : {Index(64), Index(256), Index(1024), Index(4096)}) {
    const double f = forward_collectives_us(c, 200), b = backward_collective_us(c, 200);
    if (rank_ == 0) std::printf("C %5ld: forward %7.1f us, backward %7.1f us\n", long(c), f, b);
  }
  MPI_Finalize();
  return 0;
}
