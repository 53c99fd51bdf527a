#!/usr/bin/env bash
# Context parallelism on CPU ranks at a long sequence: peak resident memory per rank and step
# time for one training step at cp 1, 2 and 4 (one rank per cp rank), beside `ftune plan`'s
# prediction of the step's activation peak. The activation part of a run is its peak RSS minus
# that of the same run at a 256-token row (process, libraries, model and optimizer state);
# the plan's is its total at the long row minus its total at 256 (`ftune plan --json`). Prints a
# markdown table.
# Not a CTest test (minutes). Usage: tests/bench_cp.sh BUILD_DIR [SEQ] [SCRATCH]
set -euo pipefail
BUILD=$(cd "${1:?usage: $0 BUILD_DIR [SEQ] [SCRATCH]}" && pwd)
SEQ=${2:-16384}
SCRATCH=${3:-/tmp/ftune_bench_cp}
SRC=$(cd "$(dirname "$0")/.." && pwd)
FTUNE=$BUILD/ftune
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH" && cd "$SCRATCH"

# Documents longer than the row: every row is full.
python3 - "$SEQ" > long.jsonl <<'PY'
import json, random, sys
random.seed(1)
words = "the of and to in is was for on that with as by at from it an be this are or".split()
for i in range(8):
    text = " ".join(random.choice(words) for _ in range(int(sys.argv[1]) // 2 + 64))
    print(json.dumps({"text": text}))
PY
cat > base.yaml <<YAML
run: {output_dir: $SCRATCH/run, seed: 3, threads: 1}
tokenizer: {path: $SRC/configs/demo/tokenizer}
model:
  dtype: fp32
  arch: {vocab_size: 320, hidden_size: 128, intermediate_size: 384, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: $SEQ}
data: {inputs: ["$SCRATCH/long.jsonl"], max_seq_len: $SEQ, packing: false, dir: $SCRATCH/data,
       split: {test_count: 1}}
train: {steps: 3, micro_batch: 1}
checkpoint: {every: 0}
log: {progress: lines, jsonl: false, tensorboard: false}
YAML
"$FTUNE" prepare --config base.yaml > prepare.log 2>&1 || { cat prepare.log; exit 1; }

bench() {  # cp seq -> the bench JSON line (rank 0)
  "${MPIRUN[@]}" -np "$1" "$FTUNE" bench train --config base.yaml --set parallel.cp="$1" \
    --set data.max_seq_len="$2" --warmup 1 --steps 2 2> "bench_$1_$2.err" | tail -1
}
plan_total() {  # cp seq -> bytes of the config's own layout, CPU ranks (1.x attention)
  "$FTUNE" plan --config base.yaml --set parallel.cp="$1" --set data.max_seq_len="$2" --nodes 1 \
    --gpus-per-node "$1" --attention materialized --json 2> /dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["total_bytes"])'
}
echo "| cp | ranks | tokens per rank | peak RSS per rank (GiB) | activation part (GiB) | plan's (GiB) | step (s) | exposed comm |"
echo "|---|---|---|---|---|---|---|---|"
for cp in 1 2 4; do
  long=$(bench $cp "$SEQ")
  short=$(bench $cp 256)
  p_long=$(plan_total $cp "$SEQ")
  p_short=$(plan_total $cp 256)
  python3 - "$cp" "$SEQ" "$long" "$short" "$p_long" "$p_short" <<'PY'
import json, sys
cp, seq = int(sys.argv[1]), int(sys.argv[2])
long, short = json.loads(sys.argv[3]), json.loads(sys.argv[4])
p_long, p_short = float(sys.argv[5]), float(sys.argv[6])
g = 2 ** 30
act = (long["peak_rss_bytes"] - short["peak_rss_bytes"]) / g
print(f"| {cp} | {cp} | {seq // cp} | {long['peak_rss_bytes'] / g:.2f} | {act:.2f} | "
      f"{(p_long - p_short) / g:.2f} | {long['step_ms_median'] / 1e3:.2f} | "
      f"{100 * long['comm_wait_fraction']:.0f} % |")
PY
done
echo
echo "$(date -u +%F), $(uname -m), $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
