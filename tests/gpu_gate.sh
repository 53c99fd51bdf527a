#!/usr/bin/env bash
# Runs a gpu-labelled test only where it can run: with at least NEED CUDA devices visible to this
# build's libtorch. Otherwise it prints why and exits 77, which CTest reports as skipped, so that
# `ctest -L gpu` on a CPU-only machine (CI) skips instead of failing.
# Usage: gpu_gate.sh <cuda_devices binary> <NEED> <command...>   (env FTUNE_CUDA_BUILD: ON|OFF)
set -euo pipefail
probe=$1 need=$2
shift 2
if [[ ${FTUNE_CUDA_BUILD:-} == OFF ]]; then
  echo "SKIP: this build's libtorch has no CUDA (needs $need CUDA device(s); build against a CUDA libtorch, e.g. cluster/gpu_build.sh)"
  exit 77
fi
have=$("$probe" 2> /dev/null | tail -n 1) || have=0
[[ $have =~ ^[0-9]+$ ]] || have=0
if ((have < need)); then
  echo "SKIP: needs $need CUDA device(s), $have visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})"
  exit 77
fi
exec "$@"
