#!/usr/bin/env bash
# Install the Debian packages normkit needs, only those missing.
#   scripts/install-deps.sh           build + test: cmake g++ make libeigen3-dev catch2, and Open MPI
#                                     (libopenmpi-dev openmpi-bin) for SyncBatchNorm's tests under mpirun
#                                     (+ clang-N and libclang-rt-N-dev when CXX is clang++-N)
#   scripts/install-deps.sh --bench   also libbenchmark-dev (+ libdnnl-dev, gnuplot-nox if available)
#   scripts/install-deps.sh --cross   also g++-aarch64-linux-gnu and qemu-user (scripts/test-aarch64.sh)
#   scripts/install-deps.sh --qemu    also qemu-user (scripts/consumer-test.sh runs the run-time ISA
#                                     dispatch on emulated older x86-64 CPUs)
#   scripts/install-deps.sh --fuzz    also clang-14 and libclang-rt-14-dev (libFuzzer and the sanitizer
#                                     runtimes; scripts/fuzz.sh)
#   scripts/install-deps.sh --format  clang-format (Debian 12: 14, which .clang-format is written
#                                     for; scripts/format.sh). Given alone, only that: formatting
#                                     needs none of the build packages.
# Flags combine.
set -euo pipefail

bench=0
cross=0
qemu=0
fuzz=0
format=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --cross) cross=1 ;;
    --qemu) qemu=1 ;;
    --fuzz) fuzz=1 ;;
    --format) format=1 ;;
    *) echo "usage: $0 [--bench] [--cross] [--qemu] [--fuzz] [--format]" >&2; exit 2 ;;
  esac
done

required=(cmake g++ make libeigen3-dev catch2 libopenmpi-dev openmpi-bin)
if [[ $format == 1 && $# == 1 ]]; then
  required=()
fi
# A clang build (CXX=clang++-14, as CI stages run scripts/run-tests.sh) needs that compiler too, and
# its sanitizer runtimes (Debian 12 ships them apart from clang, in libclang-rt-N-dev).
if [[ ${CXX:-} =~ (^|/)clang\+\+-([0-9]+)$ ]]; then
  required+=("clang-${BASH_REMATCH[2]}" "libclang-rt-${BASH_REMATCH[2]}-dev")
fi
if [[ $fuzz == 1 ]]; then
  # fuzz.sh builds with clang++-14 whatever CXX says; libFuzzer is in libclang-rt-14-dev.
  required+=(clang-14 libclang-rt-14-dev)
fi
if [[ $format == 1 ]]; then
  required+=(clang-format)
fi
optional=()
if [[ $bench == 1 ]]; then
  required+=(libbenchmark-dev)
  optional+=(libdnnl-dev gnuplot-nox)   # comparison and plots only: never fail for them
fi
if [[ $cross == 1 ]]; then
  # Eigen and Catch2 are header-only: the host's packages above serve the cross build too.
  required+=(g++-aarch64-linux-gnu qemu-user)
elif [[ $qemu == 1 ]]; then
  required+=(qemu-user)
fi

installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

sudo=()
if [[ $(id -u) != 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  fi
fi

updated=0
apt_install() {
  if [[ $updated == 0 ]]; then
    "${sudo[@]}" apt-get update -qq
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
for p in "${required[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 && ${#sudo[@]} == 0 ]]; then
    echo "install-deps: missing ${missing[*]}, and not root without sudo: install them yourself" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

for p in "${optional[@]}"; do
  installed "$p" && continue
  if [[ $(id -u) != 0 && ${#sudo[@]} == 0 ]]; then
    echo "install-deps: optional $p missing (not root, no sudo), skipped" >&2
    continue
  fi
  echo "install-deps: installing optional $p"
  apt_install "$p" || echo "install-deps: optional $p could not be installed, skipped" >&2
done
