#!/usr/bin/env bash
# Build normkit's tests for aarch64 with Debian's cross compiler and run every one under qemu-user.
#   scripts/test-aarch64.sh [-- cmake args...]      into build-aarch64/ (NORMKIT_AARCH64_DIR overrides)
# NEON is part of the aarch64 baseline, so the default flags give Eigen's NEON packets (4 floats,
# 2 doubles) and normkit's lane-buffer conversions for bfloat16/half: the kernels' tails and panel
# widths take the paths they take on Graviton or Apple CPUs. Release at -O2 (the cross build is
# compile-bound; -O3 buys nothing the tests can see). Installs g++-aarch64-linux-gnu and qemu-user
# when missing (scripts/install-deps.sh --cross). Then the consumer project's run-time dispatch
# executable, which off x86-64 has one level.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

extra=()
while (($#)); do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    *) echo "usage: $0 [-- cmake args...]" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh --cross

dir=${NORMKIT_AARCH64_DIR:-build-aarch64}
# Catch2 is one header tree in the host's /usr/include. CMake drops -isystem /usr/include as an
# implicit directory, and the cross compiler must not see the host's C library headers there anyway:
# it gets a directory holding only a link to catch2/.
mkdir -p "$dir/host-headers"
ln -sfn /usr/include/catch2 "$dir/host-headers/catch2"
headers=$(cd "$dir/host-headers" && pwd)

# No MPI: the host's Open MPI is an x86-64 library (SyncBatchNorm's tests run in the host builds).
cmake -S . -B "$dir" --toolchain cmake/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" "-DCMAKE_CXX_FLAGS=-isystem $headers" \
  -DNORMKIT_NATIVE=OFF -DNORMKIT_SANITIZE=OFF -DNORMKIT_BUILD_TESTS=ON \
  -DNORMKIT_BUILD_EXAMPLES=OFF -DNORMKIT_BUILD_BENCHMARKS=OFF -DNORMKIT_MPI=OFF "${extra[@]}"
# The test executables only: the header self-containment check is a compile-only test that the host
# builds already run, and under the cross compiler it would cost more than all tests' runs in qemu.
cmake --build "$dir" -j2 --target normkit_all_tests
# ctest runs each test through CMAKE_CROSSCOMPILING_EMULATOR (qemu-aarch64, set by the toolchain).
ctest --test-dir "$dir" --output-on-failure --no-tests=error -j2

# normkit_isa_variants() off x86-64 compiles the per-level sources once (name_nk_base) and
# normkit::dispatch::pick returns that one: the consumer project's dispatch executable, cross-built
# and run under qemu, checks it against its float64 LayerNorm.
cmake -S tests/consumer -B "$dir/consumer" --toolchain "$PWD/cmake/aarch64-linux-gnu.cmake" \
  -DNORMKIT_CONSUMER_MODE=subdirectory -DNORMKIT_SOURCE_DIR="$PWD" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG"
cmake --build "$dir/consumer" -j2 --target normkit_consumer_dispatch
qemu-aarch64 -L /usr/aarch64-linux-gnu "$dir/consumer/normkit_consumer_dispatch" base
