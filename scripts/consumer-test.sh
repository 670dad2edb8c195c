#!/usr/bin/env bash
# Check that normkit can be used from another CMake project, both ways:
#   1. configure + build + install normkit into a temporary prefix, then build and run
#      tests/consumer against it with find_package (CMAKE_PREFIX_PATH);
#   2. build and run tests/consumer with add_subdirectory(<this source tree>).
# NORMKIT_CONSUMER_WORKDIR keeps the work in a given directory instead of a temporary one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

bash scripts/install-deps.sh

if [[ -n ${NORMKIT_CONSUMER_WORKDIR:-} ]]; then
  work=$NORMKIT_CONSUMER_WORKDIR
  rm -rf "$work"
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/normkit-consumer.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
prefix=$work/prefix

echo "== install normkit into $prefix"
cmake -S "$root" -B "$work/normkit" -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DNORMKIT_BUILD_TESTS=OFF -DNORMKIT_BUILD_EXAMPLES=OFF -DNORMKIT_BUILD_BENCHMARKS=OFF
cmake --build "$work/normkit" -j2
cmake --install "$work/normkit"
test -f "$prefix/include/normkit/normkit.hpp"
test -f "$prefix/lib/cmake/normkit/normkitConfig.cmake"

echo "== consumer, find_package mode"
cmake -S tests/consumer -B "$work/package" -DNORMKIT_CONSUMER_MODE=package \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
cmake --build "$work/package" -j2
"$work/package/normkit_consumer"

echo "== consumer, add_subdirectory mode"
cmake -S tests/consumer -B "$work/subdirectory" -DNORMKIT_CONSUMER_MODE=subdirectory \
  -DNORMKIT_SOURCE_DIR="$root"
cmake --build "$work/subdirectory" -j2
"$work/subdirectory/normkit_consumer"

echo "consumer-test: both modes passed"
