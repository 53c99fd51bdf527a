#!/usr/bin/env bash
# Compiles (syntax and types only: -fsyntax-only) every C++ source, alone and in its unity batch,
# as a CUDA build of ftune sees it (FTUNE_WITH_NCCL, nccl.h and the CUDA runtime headers from the toolkit, libtorch's c10/cuda
# and ATen/cuda headers), on a machine whose libtorch is a CPU build. It catches code that would
# not compile against a CUDA libtorch (the NCCL backend, compat.h's CUDA branches) without one;
# it cannot catch link errors. Against libtorch 2.x's headers it also checks the 2.x branches
# (compat.h) without a 2.x build, e.g. with Debian trixie's libtorch-dev unpacked anywhere:
#   curl -O http://deb.debian.org/debian/pool/main/p/pytorch/libtorch-dev_2.6.0+dfsg-7_amd64.deb
#   dpkg -x libtorch-dev_2.6.0+dfsg-7_amd64.deb /tmp/torch26
#   TORCH_INCLUDE=/tmp/torch26/usr/include cluster/check_cuda_sources.sh
# Usage: cluster/check_cuda_sources.sh [CUDA_HOME (/usr/local/cuda)]
#   env: JOBS (nproc), TORCH_INCLUDE (where to look for libtorch's headers; default the system's)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=${1:-/usr/local/cuda}
[[ -f $CUDA/include/nccl.h && -f $CUDA/include/cuda_runtime_api.h ]] ||
  { echo "no CUDA toolkit with NCCL at $CUDA (need include/nccl.h, include/cuda_runtime_api.h)" >&2; exit 2; }
STREAM_H=$(find ${TORCH_INCLUDE:-/usr/include /usr/local/include} -path '*/c10/cuda/CUDAStream.h' -print -quit 2> /dev/null)
[[ -n $STREAM_H ]] || { echo "libtorch's c10/cuda headers not found (set TORCH_INCLUDE)" >&2; exit 2; }
TORCH_INC=${STREAM_H%/c10/cuda/CUDAStream.h}
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
# CMake generates this header in a CUDA build of libtorch; a CPU build ships without it.
mkdir -p "$SHIM/c10/cuda/impl"
[[ -f $TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h ]] || echo "#pragma once" > "$SHIM/c10/cuda/impl/cuda_cmake_macros.h"
MPI_INC=$(mpicxx --showme:incdirs | tr ' ' '\n' | sed 's/^/-isystem /' | tr '\n' ' ')
FLAGS="-std=gnu++17 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -DFTUNE_WITH_NCCL=1
  -DOMPI_SKIP_MPICXX=1 -I$PWD -I$SHIM -isystem $CUDA/include
  -isystem $TORCH_INC/torch/csrc/api/include $MPI_INC -isystem /usr/include/hdf5/openmpi"
# (-isystem /usr/include would break the C++ headers' #include_next)
[[ $TORCH_INC == /usr/include ]] || FLAGS="$FLAGS -isystem $TORCH_INC"
export FLAGS
# What is compiled: every source on its own (a -DFTUNE_UNITY=OFF build), and the unity batches a
# default build compiles (CMakeLists.txt: each folder's sources in file-name order, 6 to a batch,
# 7 in launch/, data/tokenizer.cpp and data/utf8.cpp alone), where two files' internal names can clash.
SOURCES=$(ls parallel/*.cpp models/*.cpp data/*.cpp runtime/*.cpp launch/*.cpp)
mkdir -p "$SHIM/unity"
for dir in parallel models data runtime launch; do
  size=6
  [[ $dir == launch ]] && size=7
  LC_ALL=C ls "$dir"/*.cpp | grep -vx -e data/tokenizer.cpp -e data/utf8.cpp |
    awk -v size=$size -v dir="$dir" -v out="$SHIM/unity" -v src="$PWD" \
      '{ f = out "/" dir "_batch" int((NR - 1) / size) ".cpp"; print "#include \"" src "/" $0 "\"" > f }'
done
UNITS="$SOURCES $(ls "$SHIM"/unity/*.cpp)"
printf '%s\n' $UNITS |
  xargs -P "${JOBS:-$(nproc)}" -I{} sh -c 'g++ $FLAGS {} > /dev/null 2>&1 || { echo "FAIL {}"; g++ $FLAGS {} 2>&1 | grep -m5 error; }' |
  tee "$SHIM/log"
n=$(echo "$SOURCES" | wc -w)
b=$(ls "$SHIM"/unity/*.cpp | wc -l)
if grep -q FAIL "$SHIM/log"; then echo "CUDA-build syntax check: failures above (of $n files and $b unity batches)"; exit 1; fi
echo "CUDA-build syntax check: $n files and $b unity batches compile with FTUNE_WITH_NCCL against $CUDA and $TORCH_INC"
