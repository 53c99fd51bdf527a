#!/usr/bin/env bash
# Sets up, builds and runs every default test (labels unit, mpi, e2e; slurm
# where Slurm can start). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cluster/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 1200 -LE bench "$@"
