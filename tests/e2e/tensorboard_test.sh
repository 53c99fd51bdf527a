#!/usr/bin/env bash
# e2e: TensorBoard event files of a training run (log.tensorboard), decoded independently
# (tests/e2e/tensorboard_read.py: CRC-32C framing checked, protobuf's own library decoding
# tensorflow.Event) and compared with metrics.jsonl: every step's loss, lr and tokens/s, every
# eval's loss and exact match, the eval examples and the resolved config as text; MFU with
# run.peak_tflops set. (The per-task exact match is checked on the demo's tasks, demo_test.)
# Usage: tensorboard_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
/usr/bin/python3 -c 'import google.protobuf' 2> /dev/null ||
  { echo "SKIPPED: /usr/bin/python3 has no protobuf (apt-get install python3-protobuf)"; exit 77; }
write_config
need_mpirun
"${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/run" \
  --set train.steps=6 --set eval.every=3 --set eval.generate=true --set run.peak_tflops=0.5 \
  > train.log 2>&1 || { cat train.log; fail "training failed"; }
ls run/tensorboard/events.out.tfevents.* > /dev/null || fail "no event file in run/tensorboard"
/usr/bin/python3 "$FTUNE_SOURCE_DIR/tests/e2e/tensorboard_read.py" run/tensorboard > events.jsonl ||
  fail "the event files do not decode"
python3 - run/metrics.jsonl events.jsonl <<'PY' || fail "TensorBoard and metrics.jsonl disagree"
import json, math, struct, sys
metrics = [json.loads(l) for l in open(sys.argv[1])]
events = [json.loads(l) for l in open(sys.argv[2])]
assert events[0] == {"file_version": "brain.Event:2"}, events[0]
def f32(x):  # TensorBoard keeps scalars as float32
    return struct.unpack("<f", struct.pack("<f", x))[0]
scalars = {(e["tag"], e["step"]): e["value"] for e in events if "value" in e}
texts = {(e["tag"], e["step"]): e["text"] for e in events if "text" in e}
steps = [m for m in metrics if "loss" in m and "eval_loss" not in m]
evals = [m for m in metrics if "eval_loss" in m]
assert len(steps) == 6 and len(evals) == 2, (len(steps), len(evals))
for m in steps:
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("throughput/tokens_per_s", "tokens_per_s"),
                     ("throughput/mfu", "mfu")):
        assert scalars[(tag, m["step"])] == f32(m[key]), (tag, m["step"], scalars.get((tag, m["step"])), m[key])
    assert scalars[("memory/host_rss_max_gib", m["step"])] > 0
for m in evals:
    assert scalars[("eval/loss", m["step"])] == f32(m["eval_loss"]), m
    assert scalars[("eval/exact_match", m["step"])] == f32(m["exact_match"]), m
    assert "| prompt | reference | answer |" in texts[("eval/examples", m["step"])]
assert "train:" in texts[("config", 0)] and "tensorboard: true" in texts[("config", 0)]
print(f"ok: {len(scalars)} scalars and {len(texts)} texts decoded, equal to metrics.jsonl")
PY
grep -q "MFU against 0.5 TFLOP/s per device (run.peak_tflops)" train.log || { cat train.log; fail "MFU not announced"; }
grep -q "| MFU " train.log || fail "the console line has no MFU"

# log.tensorboard: false writes none.
"$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/off" --set train.steps=1 \
  --set log.tensorboard=false > off.log 2>&1 || { cat off.log; fail "training without TensorBoard failed"; }
[[ ! -e off/tensorboard ]] || fail "log.tensorboard: false still wrote event files"
echo "PASS: TensorBoard event files"
