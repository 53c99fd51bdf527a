#!/usr/bin/env bash
# e2e: the disk fills up during a save (a small tmpfs as checkpoint.dir; where mounting is not
# allowed, a file where the checkpoint directory should be). The error names the path, training
# stops with a non-zero status, the earlier checkpoint stays intact and loadable, and no
# temporary file is left behind.
# Usage: checkpoint_disk_full_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
# Size of one checkpoint of this model.
"$FTUNE" train --config base.yaml --set train.steps=2 --set run.output_dir="$SCRATCH/probe" > probe.log 2>&1 \
  || { cat probe.log; fail "probe run failed"; }
size=$(stat -c %s probe/checkpoints/step_00000002.h5)

mkdir -p full
if mount -t tmpfs -o size=$((size * 3 / 2)) tmpfs full 2> /dev/null; then
  trap 'umount "$SCRATCH/full" 2> /dev/null || true' EXIT
  launcher=("$FTUNE")
  [[ ${#MPIRUN[@]} -gt 0 ]] && launcher=("${MPIRUN[@]}" -np 2 "$FTUNE")
  rc=0
  "${launcher[@]}" train --config base.yaml --set checkpoint.dir="$SCRATCH/full" --set checkpoint.every=2 \
    > full.log 2>&1 || rc=$?
  [[ $rc != 0 ]] || { cat full.log; fail "training went on with a full disk"; }
  grep -q "step_00000004.h5" full.log || { cat full.log; fail "the error does not name the checkpoint path"; }
  grep -qi "space\|write" full.log || { cat full.log; fail "the error does not say what failed"; }
  ls full | grep -q tmp && fail "temporary file left on the full disk"
  [[ $(cat full/latest) == step_00000002.h5 ]] || fail "latest moved"
  "$FTUNE" export --checkpoint full --out hf > export.log 2>&1 || { cat export.log; fail "the earlier checkpoint is not intact"; }
  echo "ok: disk full (tmpfs of $((size * 3 / 2)) bytes) detected, step 2 intact"
else
  echo "note: cannot mount a tmpfs here; provoking the write error with a file as checkpoint dir"
  echo x > blocker
  rc=0
  "$FTUNE" train --config base.yaml --set checkpoint.dir="$SCRATCH/blocker" > blocked.log 2>&1 || rc=$?
  [[ $rc != 0 ]] || fail "training went on without a checkpoint directory"
  grep -q "$SCRATCH/blocker" blocked.log || { cat blocked.log; fail "the error does not name the path"; }
fi
echo PASS
