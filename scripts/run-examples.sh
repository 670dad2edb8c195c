#!/usr/bin/env bash
# Build and run the examples, then a short benchmark run.
#   scripts/run-examples.sh           (NORMKIT_SKIP_BENCH=1 skips the benchmark run)
# NORMKIT_BUILD_DIR overrides build/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh --bench

dir=${NORMKIT_BUILD_DIR:-build}
cmake -S . -B "$dir" -DNORMKIT_BUILD_EXAMPLES=ON -DNORMKIT_BUILD_BENCHMARKS=ON "$@"
# Aggregate targets from the top-level CMakeLists: examples and benchmarks only, not the tests.
cmake --build "$dir" -j2 --target normkit_all_examples normkit_all_benchmarks

ran=0
for name in worked_examples train_mlp load_torch_state deep_residual; do
  exe=$dir/examples/$name
  if [[ -x $exe ]]; then
    echo "== $exe"
    "$exe"
    ran=$((ran + 1))
  fi
done
# The data-parallel example needs mpirun and 2 ranks; as root Open MPI wants explicit consent.
exe=$dir/examples/train_mlp_mpi
if [[ -x $exe ]] && command -v mpirun >/dev/null; then
  echo "== mpirun -n 2 $exe"
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun -n 2 "$exe"
  ran=$((ran + 1))
fi
echo "run-examples: ran $ran example(s)"

bench=$dir/bench/normkit_bench
if [[ -z ${NORMKIT_SKIP_BENCH:-} && -x $bench ]]; then
  # Short mode: the small and medium single-thread cases; bench/README.md has the full run.
  filter='/(64x768|4096x768|nc256x1024)/t1/'
  echo "== $bench --benchmark_min_time=0.02 --benchmark_filter='$filter'"
  "$bench" --benchmark_min_time=0.02 --benchmark_filter="$filter"
fi
