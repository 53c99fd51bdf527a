#!/usr/bin/env bash
# Shared by the slurm tests; sourced, not run (CTest runs *_test.sh only). Each test starts its own
# real Slurm cluster with cluster/local_slurm.sh (munged + slurmctld + slurmd from Debian's
# packages, state under a fresh /tmp/ftune-slurm.*) and stops it on every exit path. Where Slurm
# cannot start (not root, packages missing, no network namespaces), the test prints why and exits
# 77, which CTest reports as skipped.
# Usage in a test: source "$(dirname "$0")/slurm_lib.sh" "$@"   (then start_cluster [--hosts N])
source "$(dirname "${BASH_SOURCE[0]}")/../e2e/checkpoint_lib.sh" "$@"
SRC=$FTUNE_SOURCE_DIR
SLURM_DIR=""
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

on_exit() {
  local rc=$?
  if [[ -n $SLURM_DIR ]]; then
    if ((rc != 0 && rc != 77)); then
      local f
      for f in "$SLURM_DIR"/slurmctld.log "$SLURM_DIR"/slurmd.*.log; do
        [[ -f $f ]] && { echo "--- $f (last lines)"; grep -v 'debug' "$f" | tail -n 12; }
      done
    fi
    "$SRC/cluster/local_slurm.sh" stop --dir "$SLURM_DIR" > /dev/null 2>&1 || true
    rm -rf "$SLURM_DIR"
  fi
  exit $rc
}
trap on_exit EXIT
trap 'exit 143' TERM INT  # so that a CTest timeout still stops the cluster


start_cluster() {  # [--hosts N]
  # One local Slurm per machine (fixed ports, bridge and namespace names): stop what a killed
  # earlier test left behind.
  local d
  for d in /tmp/ftune-slurm.*; do
    [[ -d $d ]] || continue
    "$SRC/cluster/local_slurm.sh" stop --dir "$d" > /dev/null 2>&1 || true
    rm -rf "$d"
  done
  SLURM_DIR=$(mktemp -d /tmp/ftune-slurm.XXXXXX)
  local rc=0
  "$SRC/cluster/local_slurm.sh" start --dir "$SLURM_DIR" "$@" > slurm_start.log 2>&1 || rc=$?
  if [[ $rc == 77 ]]; then
    cat slurm_start.log
    echo "SKIP: Slurm cannot start on this machine (reason above)"
    exit 77
  fi
  [[ $rc == 0 ]] || { cat slurm_start.log; fail "cluster/local_slurm.sh start failed ($rc)"; }
  export SLURM_CONF=$SLURM_DIR/slurm.conf
  cat slurm_start.log
}

# A field of `scontrol show job`: job_field ID JobState
job_field() { scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# Waits until job $1 has ended (at most $2 seconds); prints its final state.
wait_job() {
  local deadline=$((SECONDS + $2)) state=""
  while ((SECONDS < deadline)); do
    state=$(job_field "$1" JobState)
    case $state in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        echo "$state"; return 0 ;;
    esac
    sleep 0.5
  done
  scontrol show job "$1" >&2
  fail "job $1 did not end within $2 s (state ${state:-unknown})"
}

# Submits the sbatch template $1 (a file under cluster/slurm/) with sbatch options up to "--" and
# the job's arguments after it; prints the job id. The local cluster has no GPUs: --gpus-per-node=0.
submit() {
  local template=$1 opts=()
  shift
  while [[ $# -gt 0 && $1 != -- ]]; do opts+=("$1"); shift; done
  shift
  FTUNE_HOME=$SRC FTUNE=$FTUNE sbatch --parsable --gpus-per-node=0 --cpus-per-task=1 --time=10 \
    --chdir="$SCRATCH" "${opts[@]}" "$SRC/cluster/slurm/$template" "$@" \
    || fail "sbatch $template failed"
}

# Checks that job $1 completed with exit code 0:0 after $2 restarts; prints its log on failure.
expect_completed() {
  local id=$1 log=$3 state code restarts
  state=$(wait_job "$id" 240)
  code=$(job_field "$id" ExitCode)
  restarts=$(job_field "$id" Restarts)
  if [[ $state != COMPLETED || $code != 0:0 || $restarts != "$2" ]]; then
    cat "$log"
    fail "job $id: state $state, exit code $code, restarts $restarts; expected COMPLETED, 0:0, $2"
  fi
  echo "ok: job $id COMPLETED, exit code $code, restarts $restarts"
}
