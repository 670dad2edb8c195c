#!/usr/bin/env bash
# A/B benchmark of two revisions in one run on this machine: both built the same way (the bench
# preset: Release, -march=native), then run alternately, `rounds` times each, and compared by the
# median of each case. Alternating spreads the VM's drift over both sides; the median drops the
# rounds a neighbour disturbed. Pass the same revision twice for an A/A run: its spread is the
# noise floor against which an A/B difference means something.
#   scripts/bench-ab.sh BEFORE AFTER [rounds=5] [filter='normkit/|^Moments']
# NORMKIT_AB_TARGET picks another benchmark binary of bench/ (default normkit_bench), e.g.
# NORMKIT_AB_TARGET=normkit_bench_softmax scripts/bench-ab.sh ccb474b HEAD 5 .
# NORMKIT_AB_MARCH builds both sides for that -march instead of native (NORMKIT_BENCH_MARCH, as
# scripts/bench-isa.sh does), e.g. NORMKIT_AB_MARCH=x86-64-v3 for the AVX2 code on an AVX-512 machine.
# Writes $NORMKIT_AB_DIR (default /tmp/normkit-ab)/{A,B}<k>.json and prints the table (bench/ab_report.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Revisions resolved here, once: a relative one (HEAD~1) named again inside a reused worktree
# would be read against that worktree's own HEAD.
before=$(git rev-parse --verify "${1:?usage: $0 BEFORE AFTER [rounds] [filter]}^{commit}")
after=$(git rev-parse --verify "${2:?usage: $0 BEFORE AFTER [rounds] [filter]}^{commit}")
rounds=${3:-5}
filter=${4:-'normkit/|^Moments'}
target=${NORMKIT_AB_TARGET:-normkit_bench}
out=${NORMKIT_AB_DIR:-/tmp/normkit-ab}
mkdir -p "$out"
bash scripts/install-deps.sh --bench

isa=(-DNORMKIT_NATIVE=ON -DNORMKIT_BENCH_MARCH=)
[[ -n ${NORMKIT_AB_MARCH:-} ]] && isa=(-DNORMKIT_NATIVE=OFF "-DNORMKIT_BENCH_MARCH=$NORMKIT_AB_MARCH")
build() {  # $1 = A or B, $2 = revision; a detached worktree per side, reused when already there
  local tree="$out/tree-$1"
  if [[ ! -d $tree ]]; then git worktree add -q --detach "$tree" "$2"; else git -C "$tree" checkout -q --detach "$2"; fi
  cmake -S "$tree" -B "$tree/build-bench" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
    -DNORMKIT_BUILD_BENCHMARKS=ON -DNORMKIT_BUILD_TESTS=OFF -DNORMKIT_BUILD_EXAMPLES=OFF > /dev/null
  cmake --build "$tree/build-bench" -j2 --target "$target" > /dev/null
}
build A "$before"
build B "$after"

for ((k = 1; k <= rounds; ++k)); do
  for v in A B; do
    "$out/tree-$v/build-bench/bench/$target" --benchmark_filter="$filter" --benchmark_min_time=0.1 \
      --benchmark_out="$out/$v$k.json" --benchmark_out_format=json > /dev/null
  done
done
python3 bench/ab_report.py "$out" "$rounds"
