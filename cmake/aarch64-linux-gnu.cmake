# Cross toolchain for Debian's aarch64 cross compiler (g++-aarch64-linux-gnu), with the tests run
# under qemu-user (qemu-aarch64): ctest goes through CMAKE_CROSSCOMPILING_EMULATOR on its own.
#   cmake -S . -B build-aarch64 --toolchain cmake/aarch64-linux-gnu.cmake   (scripts/test-aarch64.sh)
# Eigen and Catch2 are header-only and the same on every architecture, so the host's packages are
# used: Eigen3Config (/usr/share/eigen3) is found outside the target root, and Catch2's include
# directory is passed by scripts/test-aarch64.sh on its own (see there), never the whole of the
# host's /usr/include, whose C library headers are the host's.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# -L: the target's dynamic loader and libraries (libstdc++, libc) live under the cross root.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
