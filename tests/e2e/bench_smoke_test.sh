#!/usr/bin/env bash
# `ftune bench train` smoke (the performance harness, not a timing): 1 warm-up + 1 timed step of
# a tiny model on 2 ranks prints one JSON line with positive throughput, step-time percentiles,
# a measured GEMM ceiling and the FLOP convention. Usage: bench_smoke_test.sh FTUNE SCRATCH
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
need_mpirun
write_config
"${MPIRUN[@]}" -np 2 "$FTUNE" bench train --config base.yaml --set run.threads=1 \
  --set run.output_dir="$SCRATCH/bench" --warmup 1 --steps 1 --gemm-n 256 > bench.out 2>&1 ||
  { cat bench.out; fail "ftune bench train failed"; }
tail -1 bench.out > bench.json
python3 - bench.json <<'PY' || { cat bench.out; fail "bad JSON line"; }
import json, sys
j = json.load(open(sys.argv[1]))
assert j["world_size"] == 2 and j["dp"] == 2 and j["timed_steps"] == 1, j
for k in ("tokens_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "flops_per_token",
          "model_tflops_per_s_per_device", "gemm_tflops_per_s", "peak_rss_bytes"):
    assert j[k] > 0, (k, j[k])
assert j["step_ms_p10"] <= j["step_ms_median"] <= j["step_ms_p90"], j
assert "6N" in j["flops_convention"], j
print("bench train JSON ok:", {k: j[k] for k in ("tokens_per_s", "step_ms_median", "gemm_tflops_per_s")})
PY
# A config whose length is in epochs (configs/demo_pretrain.yaml's way) is benchmarked too: the
# bench's step count replaces it.
"${MPIRUN[@]}" -np 2 "$FTUNE" bench train --config base.yaml --set run.threads=1 \
  --set train.steps=-1 --set train.epochs=3 --set run.output_dir="$SCRATCH/bench" --warmup 1 \
  --steps 1 --gemm-n 256 > bench_epochs.out 2>&1 ||
  { cat bench_epochs.out; fail "ftune bench train with train.epochs in the config failed"; }
tail -1 bench_epochs.out | python3 -c 'import json, sys; assert json.load(sys.stdin)["timed_steps"] == 1' ||
  { cat bench_epochs.out; fail "bad JSON line (train.epochs config)"; }
echo PASS
