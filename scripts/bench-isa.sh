#!/usr/bin/env bash
# Build normkit_bench once per ISA, run the same benchmarks with each binary, and write one report
# with a set of tables per ISA: what users of an AVX2 or SSE4.2 build get, measured on this machine.
#   scripts/bench-isa.sh [benchmark args...]
# Default benchmark args: the full run of bench/README.md (about 10 minutes per ISA on the 2-core
# VM); pass e.g. --benchmark_filter=... --benchmark_min_time=0.05 for a reduced run.
# NORMKIT_BENCH_ISAS: the -march values, default "native x86-64-v3 x86-64-v2". Binaries go to
# build-bench (native, as `cmake --preset bench`) and build-bench-<march> (e.g. build-bench-x86-64-v3),
# JSON and the report (report.md, report-<isa>.png) to NORMKIT_BENCH_OUT (default bench-isa/).
# oneDNN picks its kernels at run time, so it is capped to the same ISA (ONEDNN_MAX_CPU_ISA: AVX2
# for x86-64-v3, SSE41 for x86-64-v2) to stand for what it does on such a machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh --bench

isas=(${NORMKIT_BENCH_ISAS:-native x86-64-v3 x86-64-v2})
out=${NORMKIT_BENCH_OUT:-bench-isa}
args=("$@")
if ((${#args[@]} == 0)); then
  args=(--benchmark_min_time=0.1 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
fi
mkdir -p "$out"

build_dir() { [[ $1 == native ]] && echo build-bench || echo "build-bench-$1"; }

for isa in "${isas[@]}"; do
  dir=$(build_dir "$isa")
  if [[ $isa == native ]]; then
    flags=(-DNORMKIT_NATIVE=ON -DNORMKIT_BENCH_MARCH=)
  else
    flags=(-DNORMKIT_NATIVE=OFF "-DNORMKIT_BENCH_MARCH=$isa")
  fi
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DNORMKIT_BUILD_BENCHMARKS=ON \
    -DNORMKIT_BUILD_TESTS=OFF -DNORMKIT_BUILD_EXAMPLES=OFF "${flags[@]}"
  cmake --build "$dir" -j2 --target normkit_bench
done

jsons=()
for isa in "${isas[@]}"; do
  cap=()
  case "$isa" in
    x86-64-v3) cap=(ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2) ;;
    x86-64-v2) cap=(ONEDNN_MAX_CPU_ISA=SSE41 DNNL_MAX_CPU_ISA=SSE41) ;;
  esac
  json=$out/bench-$isa.json
  echo "== $isa: $(build_dir "$isa")/bench/normkit_bench ${args[*]}"
  env "${cap[@]}" "$(build_dir "$isa")/bench/normkit_bench" "${args[@]}" \
    --benchmark_out="$json" --benchmark_out_format=json
  jsons+=("$json")
done

python3 bench/report.py "${jsons[@]}" --md "$out/report.md" --png "$out/report.png"
