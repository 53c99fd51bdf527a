#!/usr/bin/env bash
# The GPU speed table (issue 15, PERFORMANCE.md "GPU"): on one GPU, in one run,
#   1. `ftune bench train` at the Llama-3.2-1B shape (16 layers, hidden 2048, 32/8 heads, FFN 8192,
#      vocab 128256, tied), sequence 2048, batch 4, bf16 compute with fp32 masters and moments,
#      no activation checkpointing, and `ftune plan`'s memory prediction for that layout;
#   2. beside it the Hugging Face transformers reference (hf_anchor.py, kept outside the tree:
#      ../shared/gpu/hf_anchor.py, or $HF_ANCHOR), all three modes: fp32 weights + autocast bf16
#      (HF Trainer bf16=True), pure bf16, autocast + torch.compile;
#   3. the same ftune step at the Llama-3-8B width (hidden 4096, FFN 14336, 32/8 heads, vocab
#      128256, untied) with $WIDE_LAYERS layers (as many as fit; default 8).
# Prints one table: tokens/s, step ms, MFU, peak GPU memory, ratio to the HF autocast row.
# The token ids come from the small fixture tokenizer: the model's cost does not depend on which
# ids it sees, only on the shape, so no Llama-3 tokenizer is needed on the GPU machine.
# Usage: cluster/gpu_bench.sh [BUILD_DIR]   env: STEPS (10), WARMUP (3), HF_ANCHOR, WIDE_LAYERS (8;
#        0: no 8B-width row), HF_MODES (the reference's modes, default amp,bf16,compile),
#        PYTHON (python3 with torch + transformers), OUT (logs there when set),
#        DRY_RUN=1 (no GPU needed: toy shapes on the CPU, to check this script's plumbing)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
FTUNE=$PWD/$BUILD/ftune
STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} WIDE_LAYERS=${WIDE_LAYERS:-8}
PY=${PYTHON:-python3}
ANCHOR=${HF_ANCHOR:-$PWD/../shared/gpu/hf_anchor.py}
LOG=${OUT:-$(mktemp -d)}
mkdir -p "$LOG"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[[ -x $FTUNE ]] || { echo "no ftune at $FTUNE: build first (cluster/gpu_build.sh)" >&2; exit 2; }
DRY=${DRY_RUN:-}
[[ -n $DRY ]] || command -v nvidia-smi >/dev/null ||
  { echo "nvidia-smi not found: this script needs a GPU (DRY_RUN=1 checks it on the CPU)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

gpu=$([[ -n $DRY ]] && echo "dry run on the CPU" ||
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "machine: $gpu | $(date -u +%F) | ftune $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "| $("$FTUNE" env 2>/dev/null | grep -m1 -o 'libtorch [^|]*' || true)"

# Packed 2048-token rows: (WARMUP + STEPS) x 4 rows, and more.
python3 cluster/synthetic_text.py "$WORK/text.jsonl" 3000
SEQ=2048 VOCAB=128256
[[ -z $DRY ]] || SEQ=128 VOCAB=512
config() {  # name hidden ffn layers heads kv tied -> a config file
  if [[ -n $DRY ]]; then set -- "$1" 64 128 2 4 2 "$7"; fi
  cat > "$WORK/$1.yaml" <<YAML
run: {output_dir: $WORK/run_$1, threads: $([[ -n $DRY ]] && echo 1 || echo 8)}
tokenizer: {path: $PWD/tests/fixtures/data/tokenizer}
model:
  dtype: bf16
  arch: {vocab_size: $VOCAB, hidden_size: $2, intermediate_size: $3, num_hidden_layers: $4,
         num_attention_heads: $5, num_key_value_heads: $6, tie_word_embeddings: $7,
         max_position_embeddings: 131072, rope_theta: 500000.0, rms_norm_eps: 1.0e-5}
data: {inputs: [$WORK/text.jsonl], max_seq_len: $SEQ, packing: true, split: {test_ratio: 0.0},
       dir: $WORK/data}
train: {micro_batch: 4, clip: 1.0, activation_checkpointing: false}
optim: {lr: 1.0e-4, schedule: constant}
parallel: {zero: 0}
log: {progress: lines, jsonl: false}
YAML
  echo "$WORK/$1.yaml"
}
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], 0))' "$1" "$2"; }

small=$(config llama1b 2048 8192 16 32 8 true)
wide=$(config wide8b 4096 14336 "$WIDE_LAYERS" 32 8 false)
"$FTUNE" prepare --config "$small" > "$LOG/prepare.log" 2>&1 || { cat "$LOG/prepare.log"; exit 1; }

rows=()
tps=0
ftune_row() {  # label config [--set k=v ...]: appends a row, sets tps (tokens/s; 0 on failure)
  local out=$LOG/bench_${1//[^A-Za-z0-9]/_}.log
  if "$FTUNE" bench train --config "$2" "${@:3}" --warmup "$WARMUP" --steps "$STEPS" > "$out" 2>&1; then
    local j; j=$(tail -1 "$out")
    # ftune plan's total for this very layout: the row "1 1 0 none" (dp tp zero recompute); the
    # total is the first field after the third "|".
    local plan; plan=$("$FTUNE" plan --config "$2" --nodes 1 --gpus-per-node 1 2>/dev/null |
      awk '$1 == 1 && $2 == 1 && $3 == 0 && $4 == "none" {
             for (i = 1; i <= NF; i++) if ($i == "|") n++; else if (n == 3) { print $i " GiB"; exit } }')
    [[ -n $plan ]] || plan="?"
    rows+=("$(printf '%-34s %10.0f %9.1f %7.1f%% %9.1f GiB %12s' "$1" "$(field "$j" tokens_per_s)" \
      "$(field "$j" step_ms_median)" "$(python3 -c "print(100*$(field "$j" mfu))")" \
      "$(python3 -c "print($(field "$j" peak_gpu_bytes)/2**30)")" "$plan")")
    tps=$(field "$j" tokens_per_s)
  else
    rows+=("$(printf '%-34s %s' "$1" "FAILED (see $out)")")
    tps=0
  fi
}
ftune_row "ftune 1B bf16 (fp32 masters)" "$small"
t_small=$tps
# What the fused AdamW kernel buys (libtorch >= 2.4): the same step with the plain ops.
ftune_row "ftune 1B, AdamW as plain ops" "$small" --set optim.fused=false
((WIDE_LAYERS == 0)) || ftune_row "ftune 8B-width x$WIDE_LAYERS layers" "$wide"

hf_amp=0
if [[ -f $ANCHOR && -z $DRY ]]; then
  "$PY" "$ANCHOR" --modes "${HF_MODES:-amp,bf16,compile}" --steps "$STEPS" --warmup "$WARMUP" > "$LOG/hf_anchor.jsonl" 2> "$LOG/hf_anchor.err" || true
  while read -r j; do
    mode=$(field "$j" mode)
    [[ $mode != 0 ]] || continue  # the header line (versions, GEMM ceiling)
    [[ $mode == amp ]] && hf_amp=$(field "$j" tokens_per_s)
    rows+=("$(printf '%-34s %10.0f %9.1f %7.1f%% %9.1f GiB %12s' "HF transformers $mode" \
      "$(field "$j" tokens_per_s)" "$(field "$j" step_ms_median)" "$(python3 -c "print(100*$(field "$j" mfu))")" \
      "$(field "$j" peak_mem_gib)" "-")")
  done < <(grep '^{' "$LOG/hf_anchor.jsonl" || true)
elif [[ -z $DRY ]]; then
  echo "(no HF reference: $ANCHOR not found; set HF_ANCHOR)"
fi

printf '%-34s %10s %9s %8s %13s %12s\n' what tokens/s step_ms MFU peak_mem plan_mem
printf '%s\n' "${rows[@]}"
if [[ $hf_amp != 0 && $t_small != 0 ]]; then
  python3 -c "print(f'ftune 1B / HF autocast: {$t_small/$hf_amp:.2f}x')"
fi
