#!/usr/bin/env bash
# Peak resident memory per rank while `ftune train` loads one HF model, at dp=1 (zero 0) and at
# dp=4 zero=3 (and tp=2 x dp=2 zero=3): the figure sharded loading exists for. Not a CTest test.
# Usage: tests/bench_load_memory.sh BUILD_DIR [SCRATCH]   (needs mpirun; ~160M-parameter model)
set -euo pipefail
BUILD=$(cd "${1:?usage: $0 BUILD_DIR [SCRATCH]}" && pwd)
SCRATCH=${2:-/tmp/ftune_bench_load}
SRC=$(cd "$(dirname "$0")/.." && pwd)
FIX=$SRC/tests/fixtures/data
FTUNE=$BUILD/ftune
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN=(mpirun --oversubscribe --bind-to none)
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH" && cd "$SCRATCH"

cat > base.yaml <<YAML
run: {output_dir: $SCRATCH/make, seed: 3, threads: 1}
tokenizer: {path: $FIX/tokenizer}
model:
  arch: {vocab_size: 32000, hidden_size: 1024, intermediate_size: 2816, num_hidden_layers: 8,
         num_attention_heads: 16, num_key_value_heads: 8}
data: {inputs: ["$FIX/qa.jsonl"], max_seq_len: 64, dir: $SCRATCH/data}
train: {steps: 1, micro_batch: 1}
checkpoint: {every: 0}
eval: {every: 0, max_samples: 1, max_new_tokens: 1}
log: {progress: lines}
YAML
"$FTUNE" prepare --config base.yaml > prepare.log 2>&1 || { cat prepare.log; exit 1; }
# The model to load: one step of an inline model, exported by ftune train as an HF directory.
"$FTUNE" train --config base.yaml > make.log 2>&1 || { cat make.log; exit 1; }
MODEL=$SCRATCH/make/final
echo "model: $MODEL ($(du -sh "$MODEL" | cut -f1)), $(nproc --all) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"

peak() {  # name np dp tp zero
  local name=$1 np=$2 dp=$3 tp=$4 zero=$5
  "${MPIRUN[@]}" -np "$np" "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/$name" \
    --set model.path="$MODEL" --set parallel.dp="$dp" --set parallel.tp="$tp" \
    --set parallel.zero="$zero" --set checkpoint.keep=1 > "$name.log" 2>&1 || { cat "$name.log"; exit 1; }
  # "model loaded: peak resident memory A MB on this rank so far (B MB before the model ...)"
  grep -h "model loaded: peak resident memory" "$SCRATCH/$name"/logs/rank_*.log |
    sed -E 's/.*memory ([0-9.]+) MB.*\(([0-9.]+) MB before.*/\1 \2/' | sort -n | tail -1 |
    { read -r after before
      printf '%-14s %s ranks  peak RSS per rank after loading (max over ranks): %7.1f MB, of which ' "$name" "$np" "$after"
      printf 'the model + optimizer state: %7.1f MB\n' "$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')"; }
}
peak dp1_zero0 1 1 1 0
peak dp4_zero0 4 4 1 0
peak dp4_zero3 4 4 1 3
peak tp2_dp2_zero3 4 2 2 3
