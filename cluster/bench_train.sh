#!/usr/bin/env bash
# The performance table of PERFORMANCE.md, in one run on one machine:
#   1. for each shape (the tiny config's, and a ~100M-parameter one): `ftune bench train` on one
#      rank beside ../shared/bench/torch_llama_ref.py (plain PyTorch eager: same shape, batch,
#      sequence, fp32, threads), and the plain-matmul GEMM ceiling measured by ftune on the same
#      threads -> ratios ftune / reference and model FLOP/s / GEMM ceiling;
#   2. data-parallel weak scaling: dp=2 x 1 thread vs dp=1 x 1 thread (same micro-batch per rank).
# A benchmark, not a test (CI runs `ftune bench train` for 2 steps only: tests/e2e/bench_smoke_test.sh).
# Usage: cluster/bench_train.sh [BUILD_DIR]   env: THREADS (2), STEPS (10), WARMUP (3), SHAPES
# The reference runs under /usr/bin/python3 (Debian python3-torch) unless FTUNE_TORCH_PYTHON is set.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
FTUNE=$PWD/$BUILD/ftune
REF=${FTUNE_TORCH_REF:-$PWD/../shared/bench/torch_llama_ref.py}
PY=${FTUNE_TORCH_PYTHON:-/usr/bin/python3}
THREADS=${THREADS:-2} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
SHAPES=${SHAPES:-"tiny 100m"}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The reference's OpenBLAS (Debian's pthread build) ignores torch.set_num_threads: pin it to the
# same threads (ftune sets it itself, from run.threads).
export OPENBLAS_NUM_THREADS=$THREADS
unset OMP_WAIT_POLICY  # the reference as users run it; ftune sets its own (launch/main.cpp)

# name: dim layers heads kv_heads ffn vocab seq batch
shape() {
  case $1 in
    tiny) echo "128 2 4 2 384 32000 256 8" ;;        # configs/tiny.yaml's model
    100m) echo "768 10 12 4 2048 32000 256 4" ;;     # 112M parameters
    *) echo "unknown shape $1" >&2; exit 2 ;;
  esac
}

# Text data: enough packed rows for every step.
python3 "$PWD/cluster/synthetic_text.py" "$WORK/text.jsonl" 4000

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
bench() {  # yaml np threads -> the JSON line of ftune bench train
  local out=$WORK/bench_$RANDOM.log
  mpirun --oversubscribe --bind-to none -np "$2" "$FTUNE" bench train --config "$1" \
    --set run.threads="$3" --warmup "$WARMUP" --steps "$STEPS" > "$out" 2>&1 ||
    { cat "$out"; exit 1; }
  tail -1 "$out"
}

echo "machine: $(nproc --all) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))," \
     "load $(cut -d' ' -f1 /proc/loadavg), $(date -u +%F) | fp32, $THREADS threads, $WARMUP warm-up +" \
     "$STEPS timed steps, medians"
# torch_tok/s: the reference as a user runs it; torch_passive: the same with OMP_WAIT_POLICY=PASSIVE,
# which ftune sets for itself (launch/main.cpp), for a like-for-like threading environment.
printf '%-6s %12s %12s %8s %14s %8s %14s %14s %10s\n' shape ftune_tok/s torch_tok/s ratio \
  torch_passive ratio model_GFLOP/s gemm_GFLOP/s of_gemm
for name in $SHAPES; do
  read -r DIM LAYERS HEADS KV FFN VOCAB SEQ BATCH <<< "$(shape "$name")"
  cat > "$WORK/$name.yaml" <<YAML
run: {output_dir: $WORK/run_$name}
tokenizer: {path: $PWD/tests/fixtures/data/tokenizer}
model: {arch: {vocab_size: $VOCAB, hidden_size: $DIM, intermediate_size: $FFN, num_hidden_layers: $LAYERS,
               num_attention_heads: $HEADS, num_key_value_heads: $KV}}
data: {inputs: [$WORK/text.jsonl], max_seq_len: $SEQ, packing: true, split: {test_ratio: 0.0},
       dir: $WORK/data_$SEQ}
train: {micro_batch: $BATCH, clip: 0}
optim: {lr: 1.0e-4, schedule: constant}
log: {progress: lines, jsonl: false}
YAML
  [[ -d $WORK/data_$SEQ ]] || "$FTUNE" prepare --config "$WORK/$name.yaml" > "$WORK/prepare.log" 2>&1 ||
    { cat "$WORK/prepare.log"; exit 1; }
  j=$(bench "$WORK/$name.yaml" 1 "$THREADS")
  ref_args=(--dim "$DIM" --layers "$LAYERS" --heads "$HEADS" --kv-heads "$KV" --ffn "$FFN" --vocab "$VOCAB"
            --seq "$SEQ" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
  ref=$("$PY" "$REF" "${ref_args[@]}")
  refp=$(OMP_WAIT_POLICY=PASSIVE "$PY" "$REF" "${ref_args[@]}")
  f=$(field "$j" tokens_per_s) r=$(field "$ref" tokens_per_s) rp=$(field "$refp" tokens_per_s)
  m=$(field "$j" model_tflops_per_s_per_device) g=$(field "$j" gemm_tflops_per_s)
  python3 -c "f,r,rp,m,g=$f,$r,$rp,$m,$g; print(f'%-6s %12.1f %12.1f %8.3f %14.1f %8.3f %14.1f %14.1f %10.3f' % ('$name', f, r, f/r, rp, f/rp, m*1e3, g*1e3, m/g))"
done

# Weak scaling on the first shape: 1 thread per rank, the same micro-batch per rank.
name=${SHAPES%% *}
d1=$(field "$(OPENBLAS_NUM_THREADS=1 bench "$WORK/$name.yaml" 1 1)" tokens_per_s)
d2=$(field "$(OPENBLAS_NUM_THREADS=1 bench "$WORK/$name.yaml" 2 1)" tokens_per_s)
python3 -c "d1,d2=$d1,$d2; print(f'weak scaling ($name): dp=1 x 1 thread {d1:.1f} tok/s, dp=2 x 1 thread {d2:.1f} tok/s -> efficiency {d2/(2*d1):.3f}')"
