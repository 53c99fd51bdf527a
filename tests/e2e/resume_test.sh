#!/usr/bin/env bash
# e2e: `ftune train` resumes from `latest` after a SIGKILL at an arbitrary step, and the losses
# from the resume point on are bit-identical to an uninterrupted run (1 rank; 2 ranks with ZeRO-1
# and async saves). Resharding: a checkpoint written at dp=4 ZeRO-3 resumes at dp=2 tp=2 and at
# 1 rank with the same losses within fp32 tolerance. --no-resume starts over.
# Usage: resume_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
STEPS=60  # ~10 ms per step here: enough that the SIGKILL lands mid-run
train() {  # out_dir log [extra --set ...]: 1 rank (exec: in the background, $! is ftune's pid)
  local out=$1 log=$2; shift 2
  exec "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$out" --set train.steps=$STEPS \
    "$@" > "$log" 2>&1
}

# 1. One rank: reference, then a run killed with SIGKILL once step 5 is logged, then restarted.
(train ref ref.log) || { cat ref.log; fail "reference run failed"; }
losses ref/metrics.jsonl > ref.losses
[[ $(wc -l < ref.losses) == "$STEPS" ]] || fail "reference logged $(wc -l < ref.losses) steps"
(train a a1.log) &
pid=$!
wait_for_step a/metrics.jsonl 5 120
kill -9 $pid
wait $pid && fail "the killed run exited normally" || true
ck=$(latest_of a/checkpoints)
resumed_at=$(step_of "$ck")
((resumed_at < STEPS)) || fail "the run finished before the kill (latest $ck): nothing to resume"
(train a a2.log) || { cat a2.log; fail "the resumed run failed"; }
grep -q "resumed from .*$ck: step $resumed_at" a2.log || { cat a2.log; fail "did not resume from $ck"; }
losses a/metrics.jsonl > a.losses
compare_losses ref.losses a.losses 1 0 || fail "1 rank: resumed losses differ from the uninterrupted run"
echo "ok: 1 rank killed, resumed exactly from step $resumed_at"

# 2. --no-resume starts over and moves the old checkpoints aside.
(train a a3.log --no-resume --set train.steps=2) || { cat a3.log; fail "--no-resume failed"; }
grep -q "moved .* earlier checkpoint" a3.log || { cat a3.log; fail "--no-resume did not move old checkpoints"; }
ls -d a/checkpoints/previous_* > /dev/null || fail "no previous_* directory"
[[ $(latest_of a/checkpoints) == step_00000002.h5 ]] || fail "latest is not the new run's"

if [[ ${#MPIRUN[@]} -eq 0 ]]; then echo "SKIP (partly): no mpirun for the multi-rank parts"; exit 0; fi

# 3. Two ranks, ZeRO-1, async saves: SIGKILL of one rank (mpirun ends the job), restart: exact.
train2() {  # out log [extra]
  local out=$1 log=$2; shift 2
  exec "${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$out" \
    --set train.steps=$STEPS --set parallel.zero=1 --set checkpoint.async=true "$@" > "$log" 2>&1
}
(train2 ref2 ref2.log) || { cat ref2.log; fail "2-rank reference failed"; }
losses ref2/metrics.jsonl > ref2.losses
(train2 b b1.log) &
mpid=$!
wait_for_step b/metrics.jsonl 5 120
kill -9 "$(rank_pid $mpid 1)" || fail "no rank 1 under mpirun $mpid"
wait $mpid && fail "mpirun exited 0 after a rank was killed" || true
ck=$(latest_of b/checkpoints)
resumed_at=$(step_of "$ck")
((resumed_at < STEPS)) || fail "the 2-rank run finished before the kill"
(train2 b b2.log) || { cat b2.log; fail "2-rank resume failed"; }
grep -q "resumed from .*$ck" b2.log || { cat b2.log; fail "2 ranks: did not resume from $ck"; }
losses b/metrics.jsonl > b.losses
compare_losses ref2.losses b.losses 1 0 || fail "2 ranks: resumed losses differ"

# 4. Resharding: dp=4 ZeRO-3 (global batch 4) writes; its step-6 checkpoint resumes at dp=2 tp=2
#    and at 1 rank (same global batch) and follows the dp=4 run within fp32 tolerance.
"${MPIRUN[@]}" -np 4 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/w4" \
  --set train.steps=$STEPS --set train.micro_batch=1 --set parallel.zero=3 \
  --set checkpoint.keep=100 --set checkpoint.every=6 > w4.log 2>&1 || { cat w4.log; fail "dp=4 run failed"; }
losses w4/metrics.jsonl > w4.losses
for target in tp2 one; do
  mkdir -p r_$target/checkpoints
  cp w4/checkpoints/step_00000006.h5 r_$target/checkpoints/
  echo step_00000006.h5 > r_$target/checkpoints/latest
done
"${MPIRUN[@]}" -np 4 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/r_tp2" \
  --set train.steps=$STEPS --set train.micro_batch=2 --set parallel.tp=2 --set parallel.zero=1 \
  > r_tp2.log 2>&1 || { cat r_tp2.log; fail "resume at dp=2 tp=2 failed"; }
grep -q "resumed from .*step_00000006.h5: step 6.*written with dp 4 tp 1 zero 3 on 4 rank" r_tp2.log \
  || { cat r_tp2.log; fail "dp=2 tp=2 did not resume from the dp=4 checkpoint"; }
losses r_tp2/metrics.jsonl > r_tp2.losses
compare_losses w4.losses r_tp2.losses 7 2e-5 || fail "dp=2 tp=2 after resharding differs"
(train r_one r_one.log --set train.micro_batch=4) || { cat r_one.log; fail "resume at 1 rank failed"; }
losses r_one/metrics.jsonl > r_one.losses
compare_losses w4.losses r_one.losses 7 2e-5 || fail "1 rank after resharding differs"
echo "PASS"
