// train_mlp_mpi — train_mlp's BatchNorm MLP trained data-parallel over MPI ranks, with SyncBatchNorm.
//
//   mpirun -n 2 build/examples/train_mlp_mpi [--unsynced]      (as root: add --allow-run-as-root)
//
// Every rank builds the same model (same seed) and shuffles the same way; each takes its share of
// the rows of every batch of 40 (20 and 20 on 2 ranks). SyncBatchNorm normalizes each rank's rows
// by the statistics of all 40, the loss is averaged over the 40 (dlogits / 40 on every rank), and
// an MPI_Allreduce of every parameter gradient (the Linears' and the norms' dweight/dbias) gives
// each rank the gradient of the whole batch, so every rank applies the same SGD step. Rank 0 then
// trains the same model in one process with BatchNorm on the whole batches (train_mlp --norm=batch)
// and compares the two loss curves: they must agree to rounding (relative 1e-5 per epoch: the
// statistics and gradient sums are the same sums added in another order, ~1e-7 relative per step,
// which 1000 SGD steps may grow; 2 ranks measured 4e-8).
// --unsynced trains with a plain BatchNorm on every rank instead, each normalizing by its own
// share of the batch: the curves then differ (that is the point of SyncBatchNorm).
// Exit status 1 if the curves differ, or if the loss did not fall.
#include "mlp.hpp"

#include <normkit/mpi.hpp>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace {

using mlp::Index;

// This rank's rows of a batch (contiguous shares, as even as they come) and sums over the ranks.
struct MpiRanks {
  int rank = 0, size = 1;
  std::pair<Index, Index> rows(Index batch) const { return {batch * rank / size, batch * (rank + 1) / size}; }
  void sum(float* data, Index n) const {
    MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
  double sum(double v) const {
    MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return v;
  }
  bool prints() const { return rank == 0; }
};

int run(const MpiRanks& ranks, bool unsynced) {
  const mlp::Dataset train = mlp::make_spirals(500, 1);  // 2000 points, as train_mlp
  const mlp::Dataset test = mlp::make_spirals(250, 2);
  const std::vector<double> synced =
      unsynced ? mlp::train<normkit::BatchNorm<float>>("BatchNorm on each rank's share (unsynced)", train, test, ranks)
                     .losses
               : mlp::train<normkit::SyncBatchNorm<float>>("SyncBatchNorm over MPI ranks", train, test, ranks,
                                                           MPI_COMM_WORLD)
                     .losses;
  if (ranks.rank != 0) return 0;

  std::printf("\nThe same training in one process (BatchNorm on whole batches), for comparison:\n");
  const std::vector<double> single =
      mlp::train<normkit::BatchNorm<float>>("BatchNorm", train, test, mlp::SingleProcess{}).losses;
  double worst = 0;
  std::printf("\nepoch  %d ranks (%s)  1 process (BatchNorm)  relative difference\n", ranks.size,
              unsynced ? "BatchNorm, unsynced" : "SyncBatchNorm");
  for (std::size_t e = 0; e < synced.size(); ++e) {
    const double d = std::abs(synced[e] - single[e]) / single[e];
    worst = std::max(worst, d);
    std::printf("%5zu  %24.6f  %21.6f  %19.1e\n", e + 1, synced[e], single[e], d);
  }
  const bool same = worst <= 1e-5, fell = synced.back() < 0.8 * synced.front();
  std::printf("loss curves %s (largest relative difference %.1e, must be <= 1e-5); loss %.4f -> %.4f (%s)\n",
              same ? "match" : "DIFFER", worst, synced.front(), synced.back(), fell ? "ok" : "did not fall: FAILED");
  return same && fell ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MpiRanks ranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &ranks.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks.size);
  const bool unsynced = argc > 1 && std::string(argv[1]) == "--unsynced";
  if (argc > 2 || (argc == 2 && !unsynced)) {
    if (ranks.rank == 0) std::fprintf(stderr, "usage: mpirun -n 2 %s [--unsynced]\n", argv[0]);
    MPI_Finalize();
    return 2;
  }
  int status = 1;
  try {
    status = run(ranks, unsynced);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp_mpi (rank %d): unexpected exception: %s\n", ranks.rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return status;
}
