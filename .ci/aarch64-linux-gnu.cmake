# CMake toolchain file: cross-compile for 64-bit ARM Linux with Debian's GNU cross compiler
# (apt-get install g++-aarch64-linux-gnu). Used by .ci/neon:
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=.ci/aarch64-linux-gnu.cmake
# When qemu-aarch64-static is installed (apt-get install qemu-user-static), ctest runs the test
# binaries under it; QEMU_CPU picks the emulated CPU (e.g. cortex-a57: no dot-product extension).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(MUDG_CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "Cross tool prefix")
set(CMAKE_C_COMPILER ${MUDG_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${MUDG_CROSS_PREFIX}g++)

# Libraries and headers of the target only; programs (cmake, ninja) of the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(MUDG_QEMU_AARCH64 qemu-aarch64-static)
if(MUDG_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MUDG_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
endif()
