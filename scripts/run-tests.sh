#!/usr/bin/env bash
# Build normkit's tests (and examples) and run them with ctest.
#   scripts/run-tests.sh              Release (-O2), -march=native, into build/
#   scripts/run-tests.sh --sanitize   ASan+UBSan, RelWithDebInfo, tests only, into build-asan/
# Extra arguments after -- go to the CMake configure step. NORMKIT_BUILD_DIR overrides build/
# (the sanitizer build then goes to "$NORMKIT_BUILD_DIR-asan").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sanitize=0
extra=()
while (($#)); do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [--sanitize] [-- cmake args...]" >&2; exit 2 ;;
  esac
  shift
done

bash scripts/install-deps.sh

base=${NORMKIT_BUILD_DIR:-build}
if [[ $sanitize == 1 ]]; then
  dir=${NORMKIT_BUILD_DIR:+$NORMKIT_BUILD_DIR-asan}
  dir=${dir:-build-asan}
  # -O1 -g1 (line tables): what ASan's documentation advises, and half the compile time of -O2 -g
  # (in_place_test: 95 s against 195 s on a Zen 1 core) for the same test run time; the reports
  # keep their function names and lines.
  config=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
          -DNORMKIT_SANITIZE=ON -DNORMKIT_BUILD_EXAMPLES=OFF -DNORMKIT_BUILD_BENCHMARKS=OFF)
else
  dir=$base
  # Benchmarks are left to scripts/run-examples.sh: they need libbenchmark and cost build time.
  # Release at -O2 (what Debian builds its packages with) rather than CMake's -O3: the largest tests
  # compile in two thirds of the time (residual_add_test: 87 s against 128 s on a Zen 1 core, nearly
  # all of it optimization of the instantiated kernels). The kernels are intrinsics either way, and the
  # library writes every a*b+c it means to fuse through simd::madd, kernels and scalar statistics
  # alike, so no result depends on where g++ chooses to contract (the scalar statistics once did:
  # core_fusion_test failed at -O3 -march=x86-64-v3 until moments.hpp's were made explicit; the
  # whole suite passes at -O3 since). Benchmarks keep -O3.
  config=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DNORMKIT_SANITIZE=OFF
          -DNORMKIT_BUILD_EXAMPLES=ON -DNORMKIT_BUILD_BENCHMARKS=OFF)
fi

cmake -S . -B "$dir" -DNORMKIT_BUILD_TESTS=ON "${config[@]}" "${extra[@]}"
cmake --build "$dir" -j2
# --no-tests=error: a build that registers no test must not pass as green.
ctest --test-dir "$dir" --output-on-failure --no-tests=error -j2
