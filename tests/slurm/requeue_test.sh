#!/usr/bin/env bash
# slurm: preemption and requeue on a real local Slurm cluster. The tiny finetune is submitted with
# cluster/slurm/ftune_1node.sbatch (-n 2, mpirun); mid-run the batch script gets SIGUSR1
# (`scancel --batch --signal=USR1`, what --signal=B:USR1@120 sends before the time limit), forwards
# it to the ranks, ftune saves a checkpoint and exits 75, the script requeues the job, Slurm runs
# it again, it resumes and completes. Its losses equal an uninterrupted run's exactly.
# Usage: requeue_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/slurm_lib.sh" "$@"
need_mpirun
start_cluster
write_config
STEPS=200  # 10-50 ms per step here: the signal (after step 5) lands mid-run
ARGS=(--set train.steps="$STEPS" --set checkpoint.every=0 --set parallel.zero=2)

"${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/ref" \
  --set run.threads=1 "${ARGS[@]}" > ref.log 2>&1 || { cat ref.log; fail "the uninterrupted run failed"; }
losses ref/metrics.jsonl > ref.losses

id=$(submit ftune_1node.sbatch -n 2 --ntasks-per-node=2 -o "$SCRATCH/job.log" -- \
  base.yaml --set run.output_dir="$SCRATCH/p" "${ARGS[@]}")
echo "submitted job $id"
wait_for_step p/metrics.jsonl 5 120
scancel --batch --signal=USR1 "$id" || fail "scancel --batch --signal=USR1 $id failed"
expect_completed "$id" 1 job.log
for want in "received SIGUSR1" "preempted (signal 10) after step" "exited 75; requeueing job $id" \
            "attempt 2" "resumed from" "job.sh: ftune exited with status 0"; do
  grep -qF "$want" job.log || { cat job.log; fail "the job log lacks '$want'"; }
done
step=$(sed -n 's/.*preempted (signal 10) after step \([0-9]*\).*/\1/p' job.log | head -1)
((step < STEPS)) || fail "the run ended (step $step) before the signal arrived"
echo "ok: preempted after step $step, requeued, resumed, completed $STEPS steps"
losses p/metrics.jsonl > p.losses
compare_losses ref.losses p.losses 1 0 || fail "losses after the requeue differ from the uninterrupted run"
echo PASS
