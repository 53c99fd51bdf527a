#!/usr/bin/env bash
# One-rank `ftune train` beside the plain-PyTorch eager reference
# (../shared/bench/torch_llama_ref.py, Debian python3-torch) on the same shape,
# batch, sequence, dtype (fp32) and threads, in one run; prints both and the
# ratio, then dp=2 x 1 thread vs dp=1 x 1 thread weak scaling. A benchmark,
# not a test. Usage: cluster/bench_train.sh [build dir] (defaults as below). The reference
# runs under /usr/bin/python3 (Debian python3-torch) unless FTUNE_TORCH_PYTHON says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
FTUNE=$PWD/$BUILD/ftune
REF=${FTUNE_TORCH_REF:-$PWD/../shared/bench/torch_llama_ref.py}
DIM=${DIM:-256} LAYERS=${LAYERS:-4} HEADS=${HEADS:-8} KV=${KV:-4} FFN=${FFN:-768}
VOCAB=${VOCAB:-32000} SEQ=${SEQ:-256} BATCH=${BATCH:-8} STEPS=${STEPS:-20} THREADS=${THREADS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Text data: enough packed rows of SEQ+1 tokens for every step.
python3 - "$WORK/text.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the a model learns tokens from data and the loss goes down while we train it on text".split()
with open(sys.argv[1], "w") as f:
    for i in range(4000):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(120))}) + "\n")
PY
cat > "$WORK/bench.yaml" <<YAML
run: {output_dir: $WORK/run, threads: $THREADS}
tokenizer: {path: $PWD/tests/fixtures/data/tokenizer}
model: {arch: {vocab_size: $VOCAB, hidden_size: $DIM, intermediate_size: $FFN, num_hidden_layers: $LAYERS,
               num_attention_heads: $HEADS, num_key_value_heads: $KV}}
data: {inputs: [$WORK/text.jsonl], max_seq_len: $SEQ, packing: true, split: {test_ratio: 0.0}}
train: {steps: $((STEPS + 3)), micro_batch: $BATCH, clip: 0}
optim: {lr: 1.0e-4, schedule: constant}
log: {progress: lines, every: 1000}
YAML
"$FTUNE" prepare --config "$WORK/bench.yaml" > "$WORK/prepare.log" 2>&1

median_tps() {  # median tokens/s of the steps after 3 warm-up steps, from metrics.jsonl
  python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
print(round(statistics.median(r["tokens_per_s"] for r in rows[3:]), 1))
PY
}
"$FTUNE" train --config "$WORK/bench.yaml" > "$WORK/train1.log" 2>&1
ftune_tps=$(median_tps "$WORK/run/metrics.jsonl")
ref_json=$(${FTUNE_TORCH_PYTHON:-/usr/bin/python3} "$REF" --dim $DIM --layers $LAYERS --heads $HEADS --kv-heads $KV --ffn $FFN \
  --vocab $VOCAB --seq $SEQ --batch $BATCH --steps $STEPS --threads $THREADS)
ref_tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tokens_per_s"])' "$ref_json")

# Weak scaling: 1 thread per rank, the same micro-batch per rank.
rm -rf "$WORK/run/metrics.jsonl" "$WORK/run/final" "$WORK/run/checkpoints"
"$FTUNE" train --config "$WORK/bench.yaml" --set run.threads=1 --set checkpoint.resume=false > "$WORK/t1.log" 2>&1
dp1=$(median_tps "$WORK/run/metrics.jsonl")
rm -rf "$WORK/run/metrics.jsonl" "$WORK/run/final" "$WORK/run/checkpoints"
mpirun --oversubscribe -np 2 "$FTUNE" train --config "$WORK/bench.yaml" --set run.threads=1 --set checkpoint.resume=false > "$WORK/t2.log" 2>&1
dp2=$(median_tps "$WORK/run/metrics.jsonl")

python3 - <<PY
f, r, d1, d2 = $ftune_tps, $ref_tps, $dp1, $dp2
print(f"machine: $(nproc) cores, load {open('/proc/loadavg').read().split()[0]} | shape dim $DIM layers $LAYERS heads $HEADS/$KV ffn $FFN vocab $VOCAB seq $SEQ batch $BATCH fp32, $THREADS threads")
print(f"ftune train (1 rank)      {f:10.1f} tokens/s")
print(f"PyTorch eager reference   {r:10.1f} tokens/s")
print(f"ratio ftune / reference   {f / r:10.3f}")
print(f"dp=1 x 1 thread           {d1:10.1f} tokens/s")
print(f"dp=2 x 1 thread           {d2:10.1f} tokens/s (global)")
print(f"weak-scaling efficiency   {d2 / (2 * d1):10.3f}")
PY
