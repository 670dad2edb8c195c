#!/usr/bin/env bash
# Build the libFuzzer target tests/fuzz/fuzz_norms.cpp under ASan + UBSan and run it.
#   scripts/fuzz.sh [seconds]       replay tests/fuzz/regressions/, then fuzz each build for `seconds`
#                                   (default 60) starting from the seed corpus tests/fuzz/corpus/
#   scripts/fuzz.sh --ci            replay, then a fixed number of runs from a fixed seed (reproducible:
#                                   the same commit gives the same verdict; CI's stage)
#   scripts/fuzz.sh --replay        only replay the regressions and the seed corpus
#   scripts/fuzz.sh --make-corpus   rewrite tests/fuzz/corpus/ with tests/fuzz/make_corpus.cpp
# Two builds of the same target: the baseline x86-64 ISA (SSE2, 4 floats per packet) and
# -march=native (e.g. AVX-512, 16 floats): normkit's kernels differ in their packet tails and panel
# widths. Exits non-zero on any finding: a sanitizer report, an uncaught exception, a failed check,
# a timeout (10 s) or more than 4 GB of memory. Inputs that crash are written to $dir/artifacts/.
# New inputs go to $dir/corpus-<build>/ (kept between runs); the repository's corpus is only read.
# NORMKIT_FUZZ_DIR overrides $dir (default build-fuzz/), which is also the CMake build tree
# (-DNORMKIT_BUILD_FUZZERS=ON, clang++-14; the targets are in tests/fuzz/CMakeLists.txt) and holds
# the executables. Installs what is missing through scripts/install-deps.sh --fuzz: clang-14 and
# libclang-rt-14-dev (libFuzzer, the sanitizer runtimes) besides cmake and libeigen3-dev.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=fuzz
seconds=60
case "${1:-}" in
  "") ;;
  --replay) mode=replay ;;
  --ci) mode=ci ;;
  --make-corpus) mode=corpus ;;
  *[!0-9]*) echo "usage: $0 [seconds | --ci | --replay | --make-corpus]" >&2; exit 2 ;;
  *) seconds=$1 ;;
esac

# ---- packages: only the missing ones
bash scripts/install-deps.sh --fuzz

dir=${NORMKIT_FUZZ_DIR:-build-fuzz}
mkdir -p "$dir/artifacts"

# ---- build through CMake (tests/fuzz/CMakeLists.txt has the flags: -O1 -g, libFuzzer + ASan +
# UBSan, no trace-cmp, the project's warnings as errors); make rebuilds only what changed.
# No tests, examples, benchmarks or MPI: the fuzzers need none of them.
cmake -S . -B "$dir" --log-level=WARNING -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=Debug \
  -DNORMKIT_BUILD_FUZZERS=ON -DNORMKIT_BUILD_TESTS=OFF -DNORMKIT_BUILD_EXAMPLES=OFF \
  -DNORMKIT_BUILD_BENCHMARKS=OFF -DNORMKIT_MPI=OFF -DNORMKIT_NATIVE=OFF -DNORMKIT_SANITIZE=OFF >/dev/null

if [[ $mode == corpus ]]; then
  cmake --build "$dir" -j2 --target fuzz_make_corpus
  rm -f tests/fuzz/corpus/*
  mkdir -p tests/fuzz/corpus
  "$dir/fuzz_make_corpus" tests/fuzz/corpus
  exit 0
fi

echo "fuzz.sh: building the fuzzers in $dir ($(date -u +%H:%M:%S); a few minutes when a header changed)"
cmake --build "$dir" -j2 --target normkit_all_fuzzers
builds=(baseline native)

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

regressions=(tests/fuzz/regressions/*)
[[ -e ${regressions[0]} ]] || regressions=()

# fuzz_build <build>: replay the regressions, then fuzz (or replay the corpus); nonzero on a finding.
fuzz_build() {
  local b=$1 status=0 r log work
  local bin=$dir/fuzz_norms_$b
  local common=(-timeout=10 -rss_limit_mb=4096 -artifact_prefix="$dir/artifacts/$b-")
  local limit
  # Known findings first, one process each (the first failure would end a shared one): they must
  # not fail (any more). The full output of a failing one stays in $dir/artifacts/.
  ((${#regressions[@]})) && echo "fuzz.sh: [$b] replaying ${#regressions[@]} regression input(s)"
  for r in "${regressions[@]}"; do
    log=$dir/artifacts/replay-$b-$(basename "$r").log
    if "$bin" "${common[@]}" "$r" >"$log" 2>&1; then
      echo "fuzz.sh: [$b] $r passes"
    else
      echo "fuzz.sh: [$b] $r FAILS (full output: $log)" >&2
      { grep -E -A5 'CHECK FAILED' "$log"; grep -E 'runtime error|Sanitizer|SUMMARY' "$log"; } | head -n 12 >&2 || true
      status=1
    fi
  done
  if [[ $mode == replay ]]; then
    echo "fuzz.sh: [$b] replaying the seed corpus"
    "$bin" "${common[@]}" -runs=0 tests/fuzz/corpus || status=1
    return $status
  fi
  # New inputs land in the first directory; the repository's corpus is read only.
  if [[ $mode == ci ]]; then
    # A gate must not fail at random: an empty work corpus, seed 1, a run count instead of a time
    # (the time cap is only a guard on a slow machine; docs/ci.md has what the runs take), and no
    # scheduling by execution time.
    # Exploration with fresh seeds is the timed mode's job; what it finds goes to regressions/.
    work=$dir/corpus-ci-$b
    rm -rf "$work"
    limit=(-seed=1 -runs=10000 -max_total_time=600)
    echo "fuzz.sh: [$b] fuzzing, seed 1, 10000 runs"
  else
    work=$dir/corpus-$b
    limit=(-max_total_time="$seconds" -entropic_scale_per_exec_time=1)
    echo "fuzz.sh: [$b] fuzzing for ${seconds}s"
  fi
  mkdir -p "$work"
  "$bin" "${common[@]}" "${limit[@]}" -max_len=512 -print_final_stats=1 \
      "$work" tests/fuzz/corpus || { echo "fuzz.sh: [$b] FINDING, see above and $dir/artifacts/" >&2; status=1; }
  return $status
}

# libFuzzer runs on one core: the builds fuzz side by side, each into its own log, printed whole in
# build order once both are done (the fixed seed and run count make each run's verdict independent
# of the other's timing).
pids=()
for b in "${builds[@]}"; do
  fuzz_build "$b" >"$dir/artifacts/fuzz-$b.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!builds[@]}"; do
  wait "${pids[$i]}" || status=1
  echo "==== fuzz.sh: [${builds[$i]}] log"
  cat "$dir/artifacts/fuzz-${builds[$i]}.log"
done
exit $status
