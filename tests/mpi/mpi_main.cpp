// The Catch2 main of the MPI tests: every rank runs every test case (the tests call collectives,
// so all ranks must take the same path: CHECK, never REQUIRE, inside them), and the process exits
// nonzero on every rank when any rank saw a failure. Each rank prints its own Catch2 report.
#define CATCH_CONFIG_RUNNER
#include <mpi.h>
#include <catch2/catch.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int failed = Catch::Session().run(argc, argv);
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) std::printf("normkit MPI tests: %s on every rank\n", any_failed ? "FAILED" : "passed");
  MPI_Finalize();
  return any_failed ? 1 : 0;
}
