#!/usr/bin/env bash
# Unpacked micro-batches are cut to their longest row (data/loader.h, data.pad_to_multiple):
# short examples (<= 64 tokens) at data.max_seq_len 2048 cost their own length, measured on one
# rank against data.pad_to_multiple = max_seq_len (every batch padded to 2048, the old width):
# the step computes <= 64 positions per row instead of 2048, its peak resident memory and time
# fall, and the losses of a training run are those of the padded one.
# Usage: short_rows_test.sh FTUNE SCRATCH
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config  # prepared with max_seq_len 64: every example <= 64 tokens

for pad in 8 2048; do
  "$FTUNE" bench train --config base.yaml --set run.threads=1 --set data.max_seq_len=2048 \
    --set data.pad_to_multiple=$pad --set train.micro_batch=1 \
    --set run.output_dir="$SCRATCH/bench_$pad" --warmup 1 --steps 3 --gemm-n 64 \
    > bench_$pad.out 2>&1 || { cat bench_$pad.out; fail "ftune bench train (pad $pad) failed"; }
  tail -1 bench_$pad.out > bench_$pad.json
done
python3 - bench_8.json bench_2048.json <<'PY' || fail "the cut batches did not save memory or time"
import json, sys
cut, full = (json.load(open(p)) for p in sys.argv[1:])
print("cut : tokens/step %(tokens_per_step)s, step %(step_ms_median).1f ms, peak RSS %(peak_rss_bytes)d B" % cut)
print("full: tokens/step %(tokens_per_step)s, step %(step_ms_median).1f ms, peak RSS %(peak_rss_bytes)d B" % full)
assert full["tokens_per_step"] == 2048, full
assert 0 < cut["tokens_per_step"] <= 64 and cut["tokens_per_step"] % 8 == 0, cut
# The padded step keeps 2048 positions of activations, logits and block-wise attention tiles
# (a 512-query tile against 2048 keys is 16 MB in fp32) where the cut one keeps <= 64: about
# 50 MB more on libtorch 1.13 (more with explicit attention scores). Its time is ~30x, asked 3x.
assert full["peak_rss_bytes"] - cut["peak_rss_bytes"] > 16 << 20, (cut, full)
assert full["step_ms_median"] > 3 * cut["step_ms_median"], (cut, full)
PY

# Same losses (to fp32 rounding: GEMMs of another height sum in another order).
for pad in 8 64; do
  "$FTUNE" train --config base.yaml --set run.threads=1 --set train.steps=4 \
    --set checkpoint.every=0 --set data.pad_to_multiple=$pad --set eval.every=0 \
    --set run.output_dir="$SCRATCH/train_$pad" > train_$pad.out 2>&1 ||
    { cat train_$pad.out; fail "ftune train (pad $pad) failed"; }
  losses "$SCRATCH/train_$pad/metrics.jsonl" > losses_$pad.txt
done
compare_losses losses_8.txt losses_64.txt 1 1e-5 || fail "losses differ from the padded run's"
echo PASS
