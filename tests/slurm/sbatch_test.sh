#!/usr/bin/env bash
# slurm: the tiny finetune submitted with `sbatch -n 2` through cluster/slurm/ftune_1node.sbatch on
# a real local Slurm cluster, once under mpirun and once under srun --mpi=pmix: the jobs complete
# with exit code 0:0, the run directories hold what a run writes, and both launchers give the
# same losses. First, `ftune env` shows the rank and local rank ftune reads under each launcher:
# a plain single process, mpirun inside an allocation, and srun --mpi=pmix.
# Usage: sbatch_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/slurm_lib.sh" "$@"
need_mpirun
start_cluster
write_config

# Rank and local rank under each launcher.
"$FTUNE" env > env_plain.log 2>&1 || { cat env_plain.log; fail "ftune env failed"; }
grep -q "rank 0/1 | local rank 0/1 |" env_plain.log || { cat env_plain.log; fail "plain: not rank 0/1"; }
env_job() {  # name launcher-command...
  local name=$1 id
  shift
  id=$(sbatch --parsable -n 2 --chdir="$SCRATCH" -o "$SCRATCH/$name.log" --wrap "$* $FTUNE env") \
    || fail "sbatch --wrap '$*' failed"
  [[ $(wait_job "$id" 60) == COMPLETED ]] || { cat "$name.log"; fail "$name: job $id did not complete"; }
  local r
  for r in 0 1; do
    grep -q "rank $r/2 | local rank $r/2 | host $(hostname) |" "$name.log" \
      || { cat "$name.log"; fail "$name: no line 'rank $r/2 | local rank $r/2 | host $(hostname)'"; }
  done
  echo "ok: ftune env under $name: ranks 0/2 and 1/2, local ranks 0/2 and 1/2"
}
env_job mpirun mpirun --oversubscribe --bind-to none
env_job srun srun --mpi=pmix

# The tiny finetune, from the template, under both launchers.
STEPS=8
run_template() {  # launcher
  local id
  id=$(FTUNE_LAUNCHER=$1 submit ftune_1node.sbatch -n 2 --ntasks-per-node=2 \
    -o "$SCRATCH/train_$1.log" -- base.yaml --set run.output_dir="$SCRATCH/run_$1" \
    --set train.steps=$STEPS --set checkpoint.every=4)
  echo "submitted job $id (template ftune_1node.sbatch, FTUNE_LAUNCHER=$1, -n 2)"
  expect_completed "$id" 0 "train_$1.log"
  local run=run_$1
  grep -q "launcher $1" "train_$1.log" || fail "the job log does not name launcher $1"
  grep -q "job.sh: ftune exited with status 0" "train_$1.log" || { cat "train_$1.log"; fail "no exit status 0 in the log"; }
  [[ -f $run/metrics.jsonl && -f $run/checkpoints/latest && -d $run/final ]] \
    || { ls -R "$run"; fail "$run lacks metrics.jsonl, checkpoints/latest or final/"; }
  [[ $(cat "$run/checkpoints/latest") == step_0000000$STEPS.h5 ]] || fail "latest checkpoint is $(cat "$run/checkpoints/latest")"
  losses "$run/metrics.jsonl" > "$1.losses"
  [[ $(wc -l < "$1.losses") == "$STEPS" ]] || fail "$run/metrics.jsonl has $(wc -l < "$1.losses") steps, expected $STEPS"
  echo "ok: $run has metrics of $STEPS steps, checkpoint $(cat "$run/checkpoints/latest"), final/"
}
run_template mpirun
run_template srun
compare_losses mpirun.losses srun.losses 1 0 || fail "srun --mpi=pmix and mpirun gave different losses"
echo PASS
