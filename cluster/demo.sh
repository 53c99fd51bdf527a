#!/usr/bin/env bash
# The README's first command: install what is needed, build, and run a real finetune end to
# end under `mpirun -np 2` on the bundled inputs (configs/demo/, CC0):
#   1. pretrain a tiny Llama base model on a plain-text corpus  (configs/demo_pretrain.yaml)
#   2. prepare + finetune it on an instruction dataset          (configs/demo_finetune.yaml)
#   3. evaluate base vs finetuned on the held-out test split     (ftune eval --compare)
#   4. ask both models a few questions they have never seen      (ftune generate, before / after)
# Outputs go to runs/demo/ (removed first, so every run starts fresh); the report is
# runs/demo/finetune/report.md. Runs as root on a fresh Debian 12 machine.
#   NP=4 cluster/demo.sh            # another number of ranks
#   FTUNE_SKIP_APT=1 cluster/demo.sh
#   BUILD_DIR=build-x FTUNE_DEMO_SKIP_SETUP=1 cluster/demo.sh   # an existing build, no setup
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
NP=${NP:-2}
[ -n "${FTUNE_DEMO_SKIP_SETUP:-}" ] || cluster/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
FTUNE="$BUILD_DIR/ftune"
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NP")
PRE=configs/demo_pretrain.yaml
FT=configs/demo_finetune.yaml
BASE=runs/demo/pretrain/final
RUN=runs/demo/finetune

rm -rf runs/demo
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "1/4 pretrain the base model on configs/demo/corpus.jsonl"
"${MPIRUN[@]}" "$FTUNE" prepare --config "$PRE"
"${MPIRUN[@]}" "$FTUNE" train --config "$PRE"

stage "2/4 finetune $BASE on configs/demo/instructions.jsonl"
"${MPIRUN[@]}" "$FTUNE" prepare --config "$FT"
"${MPIRUN[@]}" "$FTUNE" train --config "$FT"

stage "3/4 evaluate base vs finetuned on the test split"
"${MPIRUN[@]}" "$FTUNE" eval --config "$FT" --compare "$BASE"

stage "4/4 before / after on questions from neither split"
PROMPTS=("Write the word 'llama' in capital letters."
         "Spell 'tune' backwards."
         "How many centimeters are in 30 meters?"
         "What is the last letter of 'finetune'?"
         "Is 128 even or odd?")
ARGS=()
for p in "${PROMPTS[@]}"; do ARGS+=(--prompt "$p"); done
mapfile -t before < <("$FTUNE" generate --model "$BASE" --max-new-tokens 12 "${ARGS[@]}")
mapfile -t after < <("$FTUNE" generate --model "$RUN/final" --max-new-tokens 12 "${ARGS[@]}")
for i in "${!PROMPTS[@]}"; do
  printf '%s\n  before: %s\n  after:  %s\n' "${PROMPTS[$i]}" "${before[$i]:-}" "${after[$i]:-}"
done

total=$(( $(date +%s) - start ))
echo
python3 - "$RUN/eval.json" "$total" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
b, f = e["base"], e["model"]
print(f"test split: {e['test_examples']} held-out examples, exact match after normalisation "
      f"'{e['normalize']}'")
print(f"  base       exact match {100 * b['exact_match']:5.1f}%   perplexity {b['eval_ppl']:.3f}")
print(f"  finetuned  exact match {100 * f['exact_match']:5.1f}%   perplexity {f['eval_ppl']:.3f}")
print(f"training + evaluation took {sys.argv[2]} s")
PY
echo "report: $RUN/report.md (loss curves: $RUN/loss_curve.svg, examples: $RUN/eval_examples.jsonl)"
