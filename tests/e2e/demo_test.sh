#!/usr/bin/env bash
# e2e: a shortened cluster/demo.sh (a few steps each) and what `ftune eval` promises:
#   pretrain -> export -> prepare -> finetune with eval.every (metrics.jsonl, best.json) ->
#   eval --compare under mpirun -np 2 (eval.json, eval_examples.jsonl, report.md, loss_curve.svg
#   all parse) -> the same eval at 1 rank gives identical metrics -> eval in the sharded layouts
#   (tp 2, dp 2 x ZeRO-3, tp 2 from the checkpoint) equals it -> eval.generate during training in
#   tp 2 and ZeRO-3 -> generate before/after, also under mpirun in tp 2 and ZeRO-3 ->
#   the C++ API examples (runner_example, finetune_example) -> bad inputs fail clearly before
#   any compute (dataset/model tokenizer mismatch, --compare with another vocabulary, empty test
#   split, checkpoint directory without a complete checkpoint).
# Usage: demo_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
set -uo pipefail
FTUNE=$(readlink -f "$1")
S=$2
BIN=$(dirname "$FTUNE")
rm -rf "$S" && mkdir -p "$S"
S=$(readlink -f "$S")
cd "${FTUNE_SOURCE_DIR:?}"
MPIRUN="${FTUNE_MPIEXEC:-mpirun} --oversubscribe --allow-run-as-root --bind-to none"
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
run() {  # run LOG CMD...: run, keep the output, print it on failure
  local log=$1; shift
  if ! "$@" > "$S/$log" 2>&1; then cat "$S/$log"; echo "FAIL: $* (see $S/$log)"; exit 1; fi
}
run_stdout() {  # run_stdout OUT CMD...: as run, but OUT gets stdout alone (stderr: OUT.err), so
  # that what MPI prints on stderr (OpenMPI 5's btl warnings, say) never reaches a compared file
  local out=$1; shift
  if ! "$@" > "$S/$out" 2> "$S/$out.err"; then
    cat "$S/$out" "$S/$out.err"; echo "FAIL: $* (see $S/$out, $S/$out.err)"; exit 1
  fi
}

PRE=(--config configs/demo_pretrain.yaml --set run.output_dir="$S/pre" --set train.epochs=-1
     --set train.steps=8 --set eval.every=4)
FT=(--config configs/demo_finetune.yaml --set run.output_dir="$S/ft" --set model.path="$S/pre/final"
    --set train.epochs=-1 --set train.steps=6 --set eval.every=3 --set eval.generate=true
    --set eval.max_samples=8 --set data.split.test_count=40 --set run.threads=1)

# 1. pretrain + finetune under mpirun -np 2, eval during training.
run pre_prepare.out $MPIRUN -np 2 "$FTUNE" prepare "${PRE[@]}"
run pre_train.out $MPIRUN -np 2 "$FTUNE" train "${PRE[@]}"
check "pretrain exported an HF dir" "[ -f $S/pre/final/config.json ] && [ -f $S/pre/final/tokenizer.json ]"
run ft_prepare.out $MPIRUN -np 2 "$FTUNE" prepare "${FT[@]}"
run ft_train.out $MPIRUN -np 2 "$FTUNE" train "${FT[@]}"
check "finetune exported an HF dir" "[ -f $S/ft/final/config.json ]"
check "eval during training logged" "grep -q 'eval at step 3' $S/ft_train.out"
if /usr/bin/python3 -c 'import google.protobuf' 2> /dev/null; then
  check "TensorBoard has the exact match per task" \
    "/usr/bin/python3 tests/e2e/tensorboard_read.py $S/ft/tensorboard | grep 'eval/exact_match/' > /dev/null"
fi
# The demo promises byte-identical models from two runs: the finetune again, in another directory.
run ft2_prepare.out $MPIRUN -np 2 "$FTUNE" prepare "${FT[@]}" --set run.output_dir="$S/ft2"
run ft2_train.out $MPIRUN -np 2 "$FTUNE" train "${FT[@]}" --set run.output_dir="$S/ft2"
check "a second finetune gives a byte-identical model" \
  "cmp $S/ft/final/model.safetensors $S/ft2/final/model.safetensors"
python3 - "$S/ft" <<'PY' && echo "ok: metrics.jsonl has eval records, best.json the best" || { echo "FAIL: eval records"; fail=1; }
import json, sys, math
d = sys.argv[1]
recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
ev = [r for r in recs if "eval_loss" in r]
assert [r["step"] for r in ev] == [3, 6], ev
for r in ev:
    assert math.isclose(r["eval_ppl"], math.exp(r["eval_loss"]), rel_tol=1e-9), r
    assert 0 <= r["exact_match"] <= 1 and r["eval_examples"] == 8, r
assert sum(1 for r in recs if "loss" in r) == 6
best = json.load(open(f"{d}/best.json"))
assert best["eval_loss"] == min(r["eval_loss"] for r in ev), best
PY

# 2. eval --compare at 2 ranks, then at 1 rank: identical metrics.
EV=(--config configs/demo_finetune.yaml --set run.output_dir="$S/ft" --set model.path="$S/pre/final"
    --set eval.max_samples=24 --set eval.batch_size=5 --set run.threads=1 --compare "$S/pre/final")
run eval2.out $MPIRUN -np 2 "$FTUNE" eval "${EV[@]}"
check "eval prints the report path" "grep -q 'report: .*report.md' $S/eval2.out"
cp "$S/ft/eval.json" "$S/eval_np2.json"; cp "$S/ft/eval_examples.jsonl" "$S/examples_np2.jsonl"
run eval1.out "$FTUNE" eval "${EV[@]}"
python3 - "$S" <<'PY' && echo "ok: artefacts parse; metrics identical at 1 and 2 ranks" || { echo "FAIL: artefacts / parity"; fail=1; }
import json, sys, math, xml.etree.ElementTree as ET
s = sys.argv[1]
e1, e2 = json.load(open(f"{s}/ft/eval.json")), json.load(open(f"{s}/eval_np2.json"))
assert e2["world_size"] == 2 and e1["world_size"] == 1
for who in ("model", "base"):
    a, b = e1[who], e2[who]
    for k in ("targets", "exact", "generated_examples", "f1", "exact_match"):
        assert a[k] == b[k], (who, k, a[k], b[k])
    assert math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=1e-9), (who, a, b)
    assert math.isclose(a["eval_ppl"], math.exp(a["eval_loss"]), rel_tol=1e-12)
    assert a["generated_examples"] == 24 and a["targets"] > 0
ex1 = [json.loads(l) for l in open(f"{s}/ft/eval_examples.jsonl")]
ex2 = [json.loads(l) for l in open(f"{s}/examples_np2.jsonl")]
assert ex1 == ex2 and len(ex1) == 24, (len(ex1), len(ex2))
for x in ex1:
    for k in ("index", "prompt", "reference", "answer", "exact", "f1", "base_answer", "base_exact"):
        assert k in x, (k, x)
    assert x["prompt"].startswith("### Question:") and x["reference"]
md = open(f"{s}/ft/report.md").read()
assert "| metric | base | finetuned |" in md and "](loss_curve.svg)" in md, md[:500]
# configs/demo/instructions.jsonl labels every record with a task: a per-task table and counts.
assert "| task | examples | base | finetuned |" in md, md[:1500]
for who in ("model", "base"):
    t = e2[who]["tasks"]
    assert sum(v["examples"] for v in t.values()) == 24 and "" not in t, t
    assert sum(v["exact"] for v in t.values()) == e2[who]["exact"], t
assert all(x["task"] for x in ex1), ex1[0]
assert md.count("\n| ") >= 20 + 7, md
root = ET.parse(f"{s}/ft/loss_curve.svg").getroot()
assert root.tag.endswith("svg") and len([c for c in root if c.tag.endswith("polyline")]) == 2
PY

# The same model read from its training checkpoint (run directory -> newest step_N.h5).
run eval_ckpt.out "$FTUNE" eval "${EV[@]}" --set run.output_dir="$S/ckpt_eval" --set data.dir="$S/ft/data" --model "$S/ft"
python3 - "$S" <<'PY' && echo "ok: eval of the checkpoint equals eval of the exported model" || { echo "FAIL: checkpoint eval"; fail=1; }
import json, sys, math
s = sys.argv[1]
a, b = json.load(open(f"{s}/ckpt_eval/eval.json"))["model"], json.load(open(f"{s}/ft/eval.json"))["model"]
assert a["exact"] == b["exact"] and a["targets"] == b["targets"], (a, b)
assert math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=1e-9), (a, b)
PY

# The layouts the model trains in, at 2 ranks: tp 2, dp 2 x ZeRO-3 (each rank loads only its
# shard of the HF directory), and tp 2 from the checkpoint: the 1-rank answers, exact matches and
# targets, the loss within fp32 reduction noise.
LAYOUTS=("final parallel.tp=2" "final parallel.zero=3" "ckpt parallel.tp=2")
for l in "${LAYOUTS[@]}"; do
  set -- $l
  out=layout_$1_${2//[.=]/_}
  model="$S/ft/final"; [ "$1" = ckpt ] && model="$S/ft"
  run $out.out $MPIRUN -np 2 "$FTUNE" eval "${EV[@]}" --set run.output_dir="$S/$out" \
    --set data.dir="$S/ft/data" --set "$2" --model "$model"
done
python3 - "$S" <<'PY' && echo "ok: eval in tp 2, dp 2 x ZeRO-3 and tp 2 from the checkpoint equals 1 rank" || { echo "FAIL: sharded eval"; fail=1; }
import json, sys, math
s = sys.argv[1]
for out, ref in (("layout_final_parallel_tp_2", "ft"), ("layout_final_parallel_zero_3", "ft"),
                 ("layout_ckpt_parallel_tp_2", "ckpt_eval")):
    a, b = json.load(open(f"{s}/{out}/eval.json")), json.load(open(f"{s}/{ref}/eval.json"))
    for who in ("model", "base") if "base" in a else ("model",):
        x, y = a[who], b[who]
        for k in ("targets", "exact", "generated_examples"):
            assert x[k] == y[k], (out, who, k, x[k], y[k])
        assert math.isclose(x["eval_loss"], y["eval_loss"], rel_tol=1e-5), (out, who, x, y)
    if ref == "ft":
        ex = [json.loads(l) for l in open(f"{s}/{out}/eval_examples.jsonl")]
        ex1 = [json.loads(l) for l in open(f"{s}/ft/eval_examples.jsonl")]
        assert [(e["answer"], e["base_answer"]) for e in ex] == \
               [(e["answer"], e["base_answer"]) for e in ex1], out
PY
check "sharded eval names its layout" "grep -q 'dp 1 x cp 1 x tp 2, each rank its shard' $S/layout_final_parallel_tp_2.out"
# eval.generate during training in tp 2 and in dp 2 x ZeRO-3 (layers gathered per token).
for layout in "parallel.tp=2" "parallel.zero=3"; do
  out=train_${layout//[.=]/_}
  run $out.out $MPIRUN -np 2 "$FTUNE" train "${FT[@]}" --set run.output_dir="$S/$out" \
    --set data.dir="$S/ft/data" --set train.steps=2 --set eval.every=2 --set "$layout"
  check "eval.generate during training with $layout" \
    "grep -q '\"exact_match\"' $S/$out/metrics.jsonl && grep -q '\"eval_examples\": *8' $S/$out/metrics.jsonl"
done

# The bundled inputs are what make_demo_data.py writes (its assertions: the before/after
# questions and what they ask about are in neither file), and the questions are not in the data.
python3 configs/demo/make_demo_data.py --out "$S/demo_data" > /dev/null
check "configs/demo is what make_demo_data.py writes" \
  "diff -r -x '*.py' -x '*.md' -x '*.tsv' configs/demo $S/demo_data"
python3 - <<'PY' && echo "ok: before/after questions are not in configs/demo/instructions.jsonl" || { echo "FAIL: before/after questions leak"; fail=1; }
import json
asked = [l.split("\t")[0] for l in open("configs/demo/before_after.tsv")]
known = {json.loads(l)["question"] for l in open("configs/demo/instructions.jsonl")}
assert len(asked) == 5 and not set(asked) & known, set(asked) & known
PY

# 3. generate before/after and the C++ API examples.
run gen.out "$FTUNE" generate --model "$S/ft/final" --prompt "Is 7 even or odd?" --max-new-tokens 4
check "generate answers" "[ \$(wc -l < $S/gen.out) -ge 1 ]"
# --jsonl (what cluster/demo.sh reads): one record per prompt, in order, each answer what the
# prompt alone gets (batched with prompts of other lengths, left-padded).
run gen_one.out "$FTUNE" generate --model "$S/ft/final" --prompt "Spell 'tune' backwards." \
  --max-new-tokens 6
run_stdout gen.jsonl "$FTUNE" generate --model "$S/ft/final" --max-new-tokens 6 --jsonl \
  --prompt "Is 7 even or odd?" --prompt "Spell 'tune' backwards." --prompt "x"
python3 - "$S/gen.jsonl" "$S/gen_one.out" <<'PY' && echo "ok: generate --jsonl" || { echo "FAIL: generate --jsonl"; fail=1; }
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
assert [r["prompt"] for r in recs] == ["Is 7 even or odd?", "Spell 'tune' backwards.", "x"], recs
assert all(isinstance(r["answer"], str) for r in recs), recs
alone = open(sys.argv[2]).read().rstrip("\n")
assert recs[1]["answer"] == alone, (recs[1]["answer"], alone)
PY
# Under mpirun in tp 2 and in dp 2 x ZeRO-3 (batches of 2 over the dp ranks): the same answers,
# greedy and sampled with a seed.
GEN=(--model "$S/ft/final" --max-new-tokens 6 --jsonl --prompt "Is 7 even or odd?"
     --prompt "Spell 'tune' backwards." --prompt "x")
run_stdout gen_s.jsonl "$FTUNE" generate "${GEN[@]}" --temperature 1 --seed 7
run_stdout gen_tp2.jsonl $MPIRUN -np 2 "$FTUNE" generate "${GEN[@]}" --tp 2
run_stdout gen_z3.jsonl $MPIRUN -np 2 "$FTUNE" generate "${GEN[@]}" --zero 3 --batch-size 2
run_stdout gen_s_tp2.jsonl $MPIRUN -np 2 "$FTUNE" generate "${GEN[@]}" --temperature 1 --seed 7 --tp 2
run_stdout gen_s_z3.jsonl $MPIRUN -np 2 "$FTUNE" generate "${GEN[@]}" --temperature 1 --seed 7 --zero 3
check "generate --tp 2 answers as 1 rank" "cmp $S/gen.jsonl $S/gen_tp2.jsonl"
check "generate --zero 3 answers as 1 rank" "cmp $S/gen.jsonl $S/gen_z3.jsonl"
check "sampled generate --tp 2 answers as 1 rank" "cmp $S/gen_s.jsonl $S/gen_s_tp2.jsonl"
check "sampled generate --zero 3 answers as 1 rank" "cmp $S/gen_s.jsonl $S/gen_s_z3.jsonl"
if [ -x "$BIN/runner_example" ]; then
  run runner.out "$BIN/runner_example" "$S/ft/final" "Spell 'cat' backwards." "Is 3 even or odd?"
  check "runner_example prints one answer per prompt" "[ \$(wc -l < $S/runner.out) -eq 2 ]"
else
  echo "FAIL: $BIN/runner_example was not built"; fail=1
fi
if [ -x "$BIN/finetune_example" ]; then
  run api.out "$BIN/finetune_example" configs/demo_finetune.yaml --set run.output_dir="$S/api" \
    --set model.path="$S/pre/final" --set train.epochs=-1 --set train.steps=2 \
    --set data.split.test_count=10 --prompt "Is 3 even or odd?"
  check "finetune_example trains and answers" \
    "grep -q 'finetuned model: .*api/final' $S/api.out && grep -q 'Is 3 even or odd? ->' $S/api.out && [ -f $S/api/final/config.json ]"
else
  echo "FAIL: $BIN/finetune_example was not built"; fail=1
fi

# 4. bad inputs: a clear error, non-zero exit, no report, quickly (before any compute).
bad() {  # bad NAME PATTERN CMD...
  local name=$1 pattern=$2; shift 2
  local t0=$SECONDS
  timeout 120 "$@" > "$S/bad_$name.out" 2>&1; local rc=$?
  check "bad input '$name' exits non-zero (not a timeout)" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
  check "bad input '$name' says: $pattern" "grep -q \"$pattern\" $S/bad_$name.out || { cat $S/bad_$name.out; false; }"
  check "bad input '$name' wrote no eval.json" "[ ! -e $S/bad_$name/eval.json ]"
  echo "   ($name took $(( SECONDS - t0 )) s)"
}
mkdir -p "$S/tok2" && cp configs/demo/tokenizer/* "$S/tok2/"
python3 -c "import json,sys; p=sys.argv[1]; json.dump(json.load(open(p)), open(p,'w'), indent=1)" "$S/tok2/tokenizer.json"
run tok2_prepare.out "$FTUNE" prepare "${FT[@]}" --set run.output_dir="$S/tok2run" --set tokenizer.path="$S/tok2"
BASECFG=(--config configs/demo_finetune.yaml --set model.path="$S/ft/final")
bad tokenizer "another tokenizer" $MPIRUN -np 2 "$FTUNE" eval "${BASECFG[@]}" \
  --set run.output_dir="$S/bad_tokenizer" --set data.dir="$S/tok2run/data" --model "$S/ft/final"
run vocab_export.out "$FTUNE" export --config configs/demo_pretrain.yaml \
  --set model.arch.vocab_size=320 --out "$S/vocab320"
bad vocab "must share one vocabulary" "$FTUNE" eval "${BASECFG[@]}" \
  --set run.output_dir="$S/bad_vocab" --set data.dir="$S/ft/data" --model "$S/ft/final" --compare "$S/vocab320"
run empty_prepare.out "$FTUNE" prepare "${FT[@]}" --set run.output_dir="$S/bad_empty" --set data.split.test_count=0
bad empty "the test split is empty" "$FTUNE" eval "${BASECFG[@]}" --set run.output_dir="$S/bad_empty" --model "$S/ft/final"
mkdir -p "$S/ckpt" && touch "$S/ckpt/step_4.h5.tmp"
bad checkpoint "no complete checkpoint\|only unfinished" "$FTUNE" eval "${BASECFG[@]}" \
  --set run.output_dir="$S/bad_checkpoint" --set data.dir="$S/ft/data" --model "$S/ckpt"
exit $fail
