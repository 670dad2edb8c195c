#!/usr/bin/env bash
# Build and run the ONNX conformance test (tests/conformance/onnx_conformance.cpp) on its own.
#   scripts/onnx_conformance.sh [-- extra cmake configure args]
# The cases come from $NORMKIT_ONNX_DIR/cases.txt (default: ../shared/conformance/onnx next to the
# checkout); the test is only defined when that file exists. NORMKIT_BUILD_DIR overrides build-onnx/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

extra=()
if (($#)); then
  [[ $1 == -- ]] || { echo "usage: $0 [-- cmake args...]" >&2; exit 2; }
  shift
  extra=("$@")
fi

dir=${NORMKIT_BUILD_DIR:-build-onnx}
onnx=()
[[ -n ${NORMKIT_ONNX_DIR:-} ]] && onnx=(-DNORMKIT_ONNX_DIR="$NORMKIT_ONNX_DIR")
# A new build dir skips the benchmarks (they need Google Benchmark); an existing one keeps its settings.
fresh=()
[[ -f $dir/CMakeCache.txt ]] || fresh=(-DNORMKIT_BUILD_BENCHMARKS=OFF)
cmake -S . -B "$dir" -DNORMKIT_BUILD_TESTS=ON "${fresh[@]}" "${onnx[@]}" "${extra[@]}"
if ! cmake --build "$dir" -j2 --target onnx_conformance; then
  echo "onnx_conformance.sh: build failed (is cases.txt present? see the CMake output above)" >&2
  exit 1
fi
"$dir/tests/onnx_conformance"
