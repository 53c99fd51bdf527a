#!/usr/bin/env bash
# e2e: preemption under mpirun. SIGUSR1 (Slurm's --signal=USR1@N) sent to ONE rank, later SIGTERM
# to the other: every rank finishes the current step, they agree (all-reduce of the flag), a
# checkpoint is saved, and the job exits with status 75 (EX_TEMPFAIL, "requeue me"). Restarting
# the same command resumes, and the losses equal an uninterrupted run's exactly.
# Usage: preempt_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
need_mpirun
write_config
STEPS=300  # ~10 ms per step here: enough that a signal lands mid-run
run() {  # out log
  exec "${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$1" \
    --set train.steps=$STEPS --set checkpoint.every=0 --set parallel.zero=2 > "$2" 2>&1
}
(run ref ref.log) || { cat ref.log; fail "reference run failed"; }
losses ref/metrics.jsonl > ref.losses

# interrupt <log> <signal> <rank> <after step>: starts the run, signals one rank, expects 75.
interrupt() {
  (run p "$1") &
  local mpid=$! rc=0
  wait_for_step p/metrics.jsonl "$4" 120
  kill -"$2" "$(rank_pid $mpid "$3")" || fail "no rank $3 under mpirun"
  wait $mpid || rc=$?
  [[ $rc == 75 ]] || { cat "$1"; fail "exit status $rc after SIG$2, expected 75"; }
  grep -q "preempted (signal [0-9]*) after step" "$1" || { cat "$1"; fail "no preemption message"; }
  local ck; ck=$(latest_of p/checkpoints)
  local step; step=$(step_of "$ck")
  ((step < STEPS)) || fail "the run finished before SIG$2 arrived"
  # The checkpoint is complete: the last logged step is its step, and no temporary file is left.
  local last; last=$(losses p/metrics.jsonl | tail -1 | cut -d' ' -f1)
  [[ $last == "$step" ]] || fail "last logged step $last but checkpoint $ck"
  ls p/checkpoints | grep -q tmp && fail "temporary file left behind"
  echo "ok: SIG$2 to rank $3 -> exit 75 with checkpoint $ck"
}
interrupt p1.log USR1 1 3
interrupt p2.log TERM 0 $(( $(step_of "$(latest_of p/checkpoints)") + 3 ))
(run p p3.log) || { cat p3.log; fail "the final resume failed"; }
grep -q "resumed from" p3.log || fail "no resume"
losses p/metrics.jsonl > p.losses
compare_losses ref.losses p.losses 1 0 || fail "losses after two preemptions differ from the uninterrupted run"
echo PASS
