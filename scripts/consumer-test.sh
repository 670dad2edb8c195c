#!/usr/bin/env bash
# Check that normkit can be used from another CMake project, every supported way:
#   1. configure normkit as if only Eigen were installed (Catch2 and Google Benchmark hidden from
#      CMake; bench/ then never looks for oneDNN or OpenMP) and install it into a temporary prefix
#      (nothing to build: header-only), then build and run tests/consumer against it with
#      find_package (CMAKE_PREFIX_PATH);
#   2. build and run tests/consumer with add_subdirectory(<this source tree>), then install it:
#      its library links normkit::normkit PUBLIC and is installed with install(EXPORT), which
#      needs normkit in an export set, and the install must carry normkit along;
#   3. build and run a downstream project against that install alone, find_package(normkit_consumer).
# In modes 1 and 2 it also runs normkit_consumer_dispatch (run-time ISA dispatch, normkit/dispatch.hpp):
# every x86-64 level this CPU has, then, under qemu-x86_64, as a Haswell (AVX2), a Nehalem (SSE4.2)
# and a qemu64 (SSE2) CPU, where an instruction from a higher level would kill it (SIGILL).
# NORMKIT_CONSUMER_WORKDIR keeps the work in a given directory instead of a temporary one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

bash scripts/install-deps.sh --qemu

if [[ -n ${NORMKIT_CONSUMER_WORKDIR:-} ]]; then
  work=$NORMKIT_CONSUMER_WORKDIR
  rm -rf "$work"
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/normkit-consumer.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
prefix=$work/prefix

# The per-level objects may export their entry points (*_nk_<level>*) and nothing else: a weak
# symbol left global would let the linker share one level's copy with every level.
check_dispatch() {
  local build=$1 objects=("$1"/normkit_consumer_dispatch_nk_*.o)
  [[ -e ${objects[0]} ]] || return 0   # not x86-64: one level, nothing to localize
  local leaked
  leaked=$(nm --defined-only --extern-only "${objects[@]}" | grep -E '^[0-9a-f]+ ' | grep -v '_nk_' || true)
  if [[ -n $leaked ]]; then
    echo "consumer-test: per-level objects export more than their entry points:" >&2
    echo "$leaked" >&2
    return 1
  fi
  "$build/normkit_consumer_dispatch"
  local cpu expected
  for cpu in Haswell:x86-64-v3 Nehalem:x86-64-v2 qemu64:x86-64; do
    expected=${cpu#*:}
    # TCG lacks a few of the model's system features (pcid, x2apic...): its warnings are noise here.
    qemu-x86_64 -cpu "${cpu%%:*}" "$build/normkit_consumer_dispatch" "$expected" 2> >(grep -v "TCG doesn't support" >&2)
  done
}

echo "== install normkit into $prefix (plain configure, as if only Eigen were installed)"
# The tests, examples and benchmarks keep their top-level defaults (ON): without their
# dependencies they must step aside with a STATUS line. Nothing needs building before the
# install (header-only; the build would only compile the examples).
# (Without Google Benchmark, bench/ stops before it looks for oneDNN and OpenMP.)
cmake -S "$root" -B "$work/normkit" -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON | tee "$work/normkit-configure.log"
grep -q "Catch2 2 not found" "$work/normkit-configure.log"
grep -q "Google Benchmark not found" "$work/normkit-configure.log"
cmake --install "$work/normkit" --prefix "$prefix"
test -f "$prefix/include/normkit/normkit.hpp"
test -f "$prefix/lib/cmake/normkit/normkitConfig.cmake"

echo "== consumer, find_package mode"
cmake -S tests/consumer -B "$work/package" -DNORMKIT_CONSUMER_MODE=package \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
cmake --build "$work/package" -j2
"$work/package/normkit_consumer"
check_dispatch "$work/package"

echo "== consumer, add_subdirectory mode, installed with its own install(EXPORT) into $work/consumer-prefix"
cmake -S tests/consumer -B "$work/subdirectory" -DNORMKIT_CONSUMER_MODE=subdirectory \
  -DNORMKIT_SOURCE_DIR="$root"
cmake --build "$work/subdirectory" -j2
"$work/subdirectory/normkit_consumer"
check_dispatch "$work/subdirectory"
cmake --install "$work/subdirectory" --prefix "$work/consumer-prefix"
test -f "$work/consumer-prefix/lib/cmake/normkit_consumer/normkit_consumerTargets.cmake"
test -f "$work/consumer-prefix/lib/cmake/normkit/normkitConfig.cmake"

# clang brings its own linker (ld.lld, no --force-group-allocation) and no -fno-gnu-unique: the
# dispatch helper must cope. CI's clang stage runs before this one and installs clang++-14.
if command -v clang++-14 >/dev/null; then
  echo "== consumer, add_subdirectory mode, clang++-14 (run-time dispatch with clang's tools)"
  CXX=clang++-14 cmake -S tests/consumer -B "$work/subdirectory-clang" -DNORMKIT_CONSUMER_MODE=subdirectory \
    -DNORMKIT_SOURCE_DIR="$root"
  cmake --build "$work/subdirectory-clang" -j2
  check_dispatch "$work/subdirectory-clang"
fi

echo "== downstream of the consumer's install (normkit found there too, not in $prefix)"
cmake -S tests/consumer -B "$work/downstream" -DNORMKIT_CONSUMER_MODE=downstream \
  -DCMAKE_PREFIX_PATH="$work/consumer-prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON
cmake --build "$work/downstream" -j2
"$work/downstream/normkit_consumer"

echo "consumer-test: all three modes passed"
