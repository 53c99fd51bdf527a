#!/usr/bin/env bash
# The README's first command: install what is needed, build the ftune binary, and run a real
# finetune end to end under `mpirun -np 2` on the bundled inputs (configs/demo/, CC0):
#   0. packages + build of the ftune binary alone   (cluster/setup.sh ftune)
#   1. pretrain a tiny Llama base model on a plain-text corpus  (configs/demo_pretrain.yaml)
#   2. prepare + finetune it on an instruction dataset          (configs/demo_finetune.yaml)
#   3. evaluate base vs finetuned on the held-out test split     (ftune eval --compare)
#   4. ask both models the questions of configs/demo/before_after.tsv, which are in neither
#      split and were fixed before any training                 (ftune generate, before / after)
# Each stage prints a progress line with the elapsed time; a table of the stage times, the exact
# match overall and per task, and the before / after answers close the run. Outputs go to
# runs/demo/ (removed first, so every run starts fresh; FTUNE_DEMO_OUT=DIR for another directory);
# the report is runs/demo/finetune/report.md. Runs as root on a fresh Debian 12 machine.
#   NP=4 cluster/demo.sh            # another number of ranks
#   FTUNE_SKIP_APT=1 cluster/demo.sh
#   BUILD_DIR=build-x FTUNE_DEMO_SKIP_SETUP=1 cluster/demo.sh   # an existing build, no setup
#   FTUNE_DEMO_PRETRAIN_SET="--set train.steps=4 --set train.epochs=-1" \
#   FTUNE_DEMO_FINETUNE_SET="..." cluster/demo.sh   # extra --set overrides (a quick plumbing check)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
NP=${NP:-2}
export BUILD_DIR OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
FTUNE="$BUILD_DIR/ftune"
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$NP")
read -r -a PRE_SET <<< "${FTUNE_DEMO_PRETRAIN_SET:-}"
read -r -a FT_SET <<< "${FTUNE_DEMO_FINETUNE_SET:-}"
OUT=${FTUNE_DEMO_OUT:-runs/demo}  # removed first: never the root
[ "$(realpath -m "$OUT")" != / ] || { echo "demo.sh: FTUNE_DEMO_OUT=$OUT is the root" >&2; exit 2; }
# The configs write to runs/demo/{pretrain,finetune}; another directory through --set.
PRE_OUT=() FT_OUT=()
if [ "$OUT" != runs/demo ]; then
  PRE_OUT=(--set run.output_dir="$OUT/pretrain")
  FT_OUT=(--set run.output_dir="$OUT/finetune" --set model.path="$OUT/pretrain/final")
fi
PRE=(--config configs/demo_pretrain.yaml "${PRE_OUT[@]}" "${PRE_SET[@]}")
FT=(--config configs/demo_finetune.yaml "${FT_OUT[@]}" "${FT_SET[@]}")
BASE=$OUT/pretrain/final
RUN=$OUT/finetune

rm -rf "$OUT"
mkdir -p "$OUT"
TIMES=$OUT/stage_seconds.tsv
start=$(date +%s)
stage_start=$start
stage_name=""
stage() {  # stage NAME TEXT: ends the running stage (its seconds go to $TIMES), starts NAME
  local now
  now=$(date +%s)
  [ -z "$stage_name" ] || printf '%s\t%s\n' "$stage_name" $((now - stage_start)) >> "$TIMES"
  stage_name=$1
  stage_start=$now
  [ -z "$1" ] || { echo; echo "=== [$((now - start)) s] $1: $2"; }
}

if [ -z "${FTUNE_DEMO_SKIP_SETUP:-}" ]; then
  stage packages "Debian packages the ftune binary needs (cluster/setup.sh)"
  FTUNE_SKIP_BUILD=1 cluster/setup.sh ftune
  stage build "build the ftune binary alone into $BUILD_DIR (cluster/run_tests.sh builds the tests)"
  FTUNE_SKIP_APT=1 cluster/setup.sh ftune
fi

stage pretrain "pretrain the base model on configs/demo/corpus.jsonl"
"${MPIRUN[@]}" "$FTUNE" prepare "${PRE[@]}"
"${MPIRUN[@]}" "$FTUNE" train "${PRE[@]}"

stage finetune "finetune $BASE on configs/demo/instructions.jsonl"
"${MPIRUN[@]}" "$FTUNE" prepare "${FT[@]}"
"${MPIRUN[@]}" "$FTUNE" train "${FT[@]}"

stage eval "evaluate base vs finetuned on the held-out test split"
"${MPIRUN[@]}" "$FTUNE" eval "${FT[@]}" --compare "$BASE"

stage before_after "before / after on questions from neither split (configs/demo/before_after.tsv)"
mapfile -t PROMPTS < <(cut -f1 configs/demo/before_after.tsv)
ASK=()
for p in "${PROMPTS[@]}"; do ASK+=(--prompt "$p"); done
# One call per model, one JSON record per question (an answer may hold a newline).
"$FTUNE" generate --model "$BASE" --max-new-tokens 12 --jsonl "${ASK[@]}" > "$OUT/before.jsonl"
"$FTUNE" generate --model "$RUN/final" --max-new-tokens 12 --jsonl "${ASK[@]}" > "$OUT/after.jsonl"
stage "" ""

total=$(( $(date +%s) - start ))
echo
python3 - "$RUN/eval.json" "$TIMES" "$total" configs/demo/before_after.tsv "$OUT/before.jsonl" \
  "$OUT/after.jsonl" <<'PY'
import json, sys
ev, times, total, tsv, before, after = sys.argv[1:]
e = json.load(open(ev))
b, f = e["base"], e["model"]
def cell(exact, n):
    return f"{100 * exact / max(n, 1):5.1f}% ({exact}/{n})"
print(f"test split: {e['test_examples']} held-out examples, exact match after normalisation "
      f"'{e['normalize']}'")
print(f"  {'task':<14} {'base':>16} {'finetuned':>16}")
for task, t in f.get("tasks", {}).items():
    bt = b.get("tasks", {}).get(task, {"exact": 0})
    print(f"  {task or '(no label)':<14} {cell(bt['exact'], t['examples']):>16} "
          f"{cell(t['exact'], t['examples']):>16}")
n = f["generated_examples"]
print(f"  {'all':<14} {cell(b['exact'], n):>16} {cell(f['exact'], n):>16}")
print(f"  perplexity     {b['eval_ppl']:16.3f} {f['eval_ppl']:16.3f}")
print()
rows = [l.rstrip("\n").split("\t") for l in open(tsv)]
def answers(path):  # the answers in question order, checked against the questions asked
    recs = [json.loads(l) for l in open(path)]
    assert [r["prompt"] for r in recs] == [q for q, _ in rows], path
    return [r["answer"].replace("\n", " ") for r in recs]
bef, aft = answers(before), answers(after)
right = 0
for i, (q, want) in enumerate(rows):
    ok = aft[i].strip() == want
    right += ok
    shown = [a.strip() or "(nothing)" for a in (bef[i], aft[i])]
    print(f"{q}   (expected: {want})\n  before: {shown[0]}\n  after:  {shown[1]}   "
          f"{'right' if ok else 'wrong'}")
print(f"after finetuning {right} of {len(rows)} right (before: "
      f"{sum(bef[i].strip() == w for i, (_, w) in enumerate(rows))})")
print()
print("seconds per stage: " + ", ".join(f"{n} {s}" for n, s in
                                        (l.split() for l in open(times))) + f"; total {total}")
PY
echo "report: $RUN/report.md (loss curves: $RUN/loss_curve.svg, examples: $RUN/eval_examples.jsonl)"
