#!/usr/bin/env bash
# e2e: context parallelism through the real loader (HDF5) and checkpoints. `ftune train` with
# parallel.cp=2 on 2 ranks follows the 1-rank run on the same global batch within fp32
# tolerance (losses and eval loss); its checkpoint resumes at dp 2 (cp 1) and at 1 rank, and a
# 1-rank checkpoint resumes at cp 2, each following the uninterrupted run; packing with cp > 1
# and a max_seq_len that does not cut into 2 * cp chunks are refused naming the key.
# Usage: context_parallel_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
need_mpirun
write_config
STEPS=12
COMMON=(--set train.steps=$STEPS --set checkpoint.keep=100 --set checkpoint.every=6
        --set eval.every=6 --set eval.generate=false)
train() {  # np out_dir log [extra --set ...]
  local np=$1 out=$2 log=$3; shift 3
  "${MPIRUN[@]}" -np "$np" "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$out" \
    "${COMMON[@]}" "$@" > "$log" 2>&1 || { cat "$log"; fail "train $out failed"; }
}
eval_losses() {  # metrics.jsonl -> "step eval_loss" lines
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    j = json.loads(line)
    if "eval_loss" in j:
        print(j["step"], repr(j["eval_loss"]))
PY
}

train 1 ref ref.log
losses ref/metrics.jsonl > ref.losses
[[ $(wc -l < ref.losses) == "$STEPS" ]] || fail "reference logged $(wc -l < ref.losses) steps"
train 2 cp2 cp2.log --set parallel.cp=2
grep -q "placement: dp 1 x cp 2 x tp 1" cp2.log || { cat cp2.log; fail "cp2 did not run at cp 2"; }
losses cp2/metrics.jsonl > cp2.losses
compare_losses ref.losses cp2.losses 1 2e-5 || fail "cp 2 differs from 1 rank"
eval_losses ref/metrics.jsonl > ref.eval
eval_losses cp2/metrics.jsonl > cp2.eval
[[ $(wc -l < ref.eval) -ge 1 ]] || fail "no eval loss logged"
compare_losses ref.eval cp2.eval 1 2e-5 || fail "eval loss on the cp 2 layout differs"
echo "ok: cp 2 trains and evaluates as 1 rank"

# Resume across a change of cp: cp 2's step-6 checkpoint at dp 2 and at 1 rank; 1 rank's at cp 2.
resume_from() {  # source_run target_run
  mkdir -p "$2/checkpoints"
  cp "$1/checkpoints/step_00000006.h5" "$2/checkpoints/"
  echo step_00000006.h5 > "$2/checkpoints/latest"
}
resume_from cp2 r_dp2
train 2 r_dp2 r_dp2.log --set parallel.cp=1 --set train.micro_batch=1
resume_from cp2 r_one
train 1 r_one r_one.log
resume_from ref r_cp2
train 2 r_cp2 r_cp2.log --set parallel.cp=2
for r in r_dp2 r_one r_cp2; do
  grep -q "resumed from .*step_00000006.h5: step 6" $r.log || { cat $r.log; fail "$r did not resume"; }
  losses $r/metrics.jsonl > $r.losses
  compare_losses ref.losses $r.losses 7 2e-5 || fail "$r after resuming differs"
done
echo "ok: checkpoints resume across cp 2 <-> dp 2 and 1 rank"

# Refused with the key named.
if "${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/bad" \
    --set parallel.cp=2 --set data.packing=true > bad1.log 2>&1; then fail "packing with cp 2 ran"; fi
grep -q "data.packing with parallel.cp > 1 is not supported" bad1.log || { cat bad1.log; fail "packing message"; }
if "${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/bad" \
    --set parallel.cp=2 --set data.max_seq_len=66 > bad2.log 2>&1; then fail "max_seq_len 66 ran"; fi
grep -q "data.max_seq_len 66 is not divisible by 2 \* parallel.cp = 4.*set data.max_seq_len to 68" bad2.log \
  || { cat bad2.log; fail "max_seq_len message"; }
echo "PASS"
