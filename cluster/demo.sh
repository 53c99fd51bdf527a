#!/usr/bin/env bash
# The README's main command: set up, build, and run the main job under mpirun.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cluster/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Until the finetuning demo lands (issue 7) the main job shows the job's layout.
mpirun --oversubscribe -np 2 "$BUILD_DIR/ftune" env --config configs/tiny.yaml
