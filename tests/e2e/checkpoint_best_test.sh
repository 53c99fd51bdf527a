#!/usr/bin/env bash
# e2e: the best eval step's checkpoint survives checkpoint.keep, and train.export: best makes it
# <run>/final. The learning rate warms up to a value that makes the loss climb again, so the best
# eval step lies well before the end; with checkpoint.keep 1 the pruning would have deleted its
# checkpoint. Checked: after a run killed (SIGKILL) later on, the best checkpoint is still there;
# after a complete run, final/ is byte-identical to `ftune export` of that checkpoint and
# best.json says final holds it; train.export: best without eval.every is refused by name.
# Usage: checkpoint_best_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
BEST=(--set eval.every=2 --set checkpoint.every=4 --set checkpoint.keep=1 --set train.export=best
      --set optim.lr=0.3 --set optim.warmup_steps=10 --set optim.schedule=constant
      --set train.steps=16)
train() {  # out_dir log [extra --set ...] (exec: in the background, $! is ftune's pid)
  local out=$1 log=$2; shift 2
  exec "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$out" "${BEST[@]}" "$@" > "$log" 2>&1
}
best_step() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' "$1"; }

# 1. A complete run: the best step early, its checkpoint kept beside the newest one.
(train a a.log) || { cat a.log; fail "the run failed"; }
b=$(best_step a/best.json)
((b < 12)) || { grep 'eval at' a.log; fail "the best eval step is $b: the test needs one well before the end"; }
ls a/checkpoints
[[ -f a/checkpoints/$(printf 'step_%08d.h5' "$b") ]] || fail "the best step's checkpoint ($b) was pruned"
[[ -f a/checkpoints/step_00000016.h5 ]] || fail "the last checkpoint is missing"
n=$(ls a/checkpoints/step_*.h5 | wc -l)
((n == 2)) || fail "expected the best and the newest checkpoint (keep 1), found $n"
echo "ok: best step $b kept beside the newest checkpoint (checkpoint.keep 1)"

# 2. final = the best step's weights, byte for byte; best.json says so.
"$FTUNE" export --checkpoint "a/checkpoints/$(printf 'step_%08d.h5' "$b")" --out best_export > export.log 2>&1 ||
  { cat export.log; fail "export of the best checkpoint failed"; }
cmp a/final/model.safetensors best_export/model.safetensors || fail "final/ is not the best step's weights"
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["final"] is True' a/best.json ||
  fail "best.json does not say final holds the best step"
echo "ok: final/ is byte-identical to the export of step $b; best.json says so"

# 3. Killed later on: the best checkpoint is still there. (A longer run, so that the kill lands
#    while it trains.)
(train k k1.log --set train.steps=200) &
pid=$!
wait_for_step k/metrics.jsonl 14 120
kill -9 $pid
wait $pid && fail "the killed run exited normally" || true
kb=$(best_step k/best.json)
[[ -f k/checkpoints/$(printf 'step_%08d.h5' "$kb") ]] || { ls k/checkpoints; fail "after the kill, the best checkpoint ($kb) is gone"; }
echo "ok: killed at step >= 14, the best checkpoint (step $kb) survived"

# 4. train.export: best without evaluations is an error naming the keys.
if "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/bad" --set train.export=best \
  --set eval.every=0 > bad.log 2>&1; then
  fail "train.export: best without eval.every was accepted"
fi
grep -q "train.export: best needs .*eval.every" bad.log || { cat bad.log; fail "unclear error"; }
echo "ok: train.export: best without eval.every is refused by name"
echo "PASS: the best checkpoint is kept and exported"
