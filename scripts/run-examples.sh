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
for name in worked_examples train_mlp load_torch_state; do
  exe=$dir/examples/$name
  if [[ -x $exe ]]; then
    echo "== $exe"
    "$exe"
    ran=$((ran + 1))
  fi
done
echo "run-examples: ran $ran example(s)"

bench=$dir/bench/normkit_bench
if [[ -z ${NORMKIT_SKIP_BENCH:-} && -x $bench ]]; then
  # Short mode: the small and medium single-thread cases; bench/README.md has the full run.
  filter='/(64x768|4096x768|nc256x1024)/t1/'
  echo "== $bench --benchmark_min_time=0.02 --benchmark_filter='$filter'"
  "$bench" --benchmark_min_time=0.02 --benchmark_filter="$filter"
fi
