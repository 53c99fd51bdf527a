#!/usr/bin/env bash
# e2e: `ftune export --checkpoint RUN_DIR|CKPT --out DIR`: the HF directory of a checkpoint is
# byte-identical to the one `ftune train` exported from the live model at the same step, works
# with `ftune generate`, follows model.dtype (bf16) and falls back past a damaged checkpoint;
# under mpirun (collective read) it is byte-identical to the one-process export, and so are the
# live exports of ZeRO-3 and tensor-parallel runs. `ftune generate
# --model CKPT|RUN_DIR` answers exactly as the checkpoint's exported HF directory does. Chat
# (section 5): the chat template and generation_config.json are exported byte for byte, a run's
# data.chat_template file becomes chat_template.jinja; eval per assistant turn; generate --chat.
# Usage: export_checkpoint_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
write_config
"$FTUNE" train --config base.yaml --set train.steps=6 > train.log 2>&1 || { cat train.log; fail "train failed"; }
[[ $(latest_of run/checkpoints) == step_00000006.h5 ]] || fail "no final checkpoint"

# 1. From the run directory (newest checkpoint) == the live export at the end of training.
"$FTUNE" export --checkpoint run --out hf > export1.log 2>&1 || { cat export1.log; fail "export failed"; }
for f in config.json model.safetensors tokenizer.json generation_config.json; do
  [[ -f hf/$f ]] || fail "hf/$f missing"
done
cmp hf/model.safetensors run/final/model.safetensors || fail "checkpoint export differs from the live model's export"
"$FTUNE" generate --model hf --prompt "What is the capital of France?" --max-new-tokens 4 > gen.log 2>&1 \
  || { cat gen.log; fail "generate on the exported model failed"; }

# 1b. generate --model CKPT (a file, a run directory) answers exactly as its HF export, greedy and
# sampled. A run of the 281-id model (every id decodes) long enough to answer "4"; its step-20
# checkpoint answers otherwise, so the comparison tells checkpoints apart. (Bit-identical weights:
# tests/mpi/checkpoint_test.cpp ExportReimportIsBitIdentical.)
PROMPTS=(--prompt "What is 2 plus 2?" --prompt "What is 7 plus 7?" --prompt "Name a primary color."
         --max-new-tokens 24)
gen() {  # gen <model> <out> [args]: the answers (stdout) into <out>, stderr into <out>.err
  local m=$1 out=$2; shift 2
  "$FTUNE" generate --model "$m" "${PROMPTS[@]}" "$@" > "$out" 2> "$out.err" \
    || { cat "$out" "$out.err"; fail "generate --model $m failed"; }
  [[ $(wc -l < "$out") -eq 3 ]] || { cat "$out"; fail "generate --model $m: not 3 answers"; }
}
"$FTUNE" train --config base.yaml --set train.steps=40 --set checkpoint.every=20 --set optim.lr=0.01 \
  --set model.arch.vocab_size=281 --set run.output_dir="$SCRATCH/v281" > v281.log 2>&1 \
  || { cat v281.log; fail "281-id train failed"; }
"$FTUNE" export --checkpoint v281 --out hf281 > export281.log 2>&1 || { cat export281.log; fail "281-id export failed"; }
SAMPLE=(--temperature 1 --seed 11)
gen hf281 gen_hf.txt
gen hf281 gen_s_hf.txt "${SAMPLE[@]}"
grep -q '[^[:space:]]' gen_hf.txt || { cat gen_hf.txt; fail "greedy answers are empty: nothing to compare"; }
for m in v281 v281/checkpoints/step_00000040.h5; do
  gen $m gen_ck.txt
  cmp gen_hf.txt gen_ck.txt || { diff gen_hf.txt gen_ck.txt; fail "greedy generate --model $m differs from its HF export"; }
  gen $m gen_s_ck.txt "${SAMPLE[@]}"
  cmp gen_s_hf.txt gen_s_ck.txt || { diff gen_s_hf.txt gen_s_ck.txt; fail "sampled generate --model $m differs from its HF export"; }
  grep -q "step_00000040.h5 (step 40)" gen_ck.txt.err || { cat gen_ck.txt.err; fail "generate did not say which checkpoint it used"; }
done
gen v281/checkpoints/step_00000020.h5 gen_s_20.txt "${SAMPLE[@]}"
if cmp -s gen_s_hf.txt gen_s_20.txt; then fail "step 20 answers as step 40: the comparison cannot tell checkpoints apart"; fi
if "$FTUNE" generate --model data --prompt hi > gen_bad.log 2>&1; then fail "generate --model <not a model> succeeded"; fi
grep -q "\-\-model data: neither an HF model directory" gen_bad.log || { cat gen_bad.log; fail "no clear error for a directory that is no model"; }
if "$FTUNE" generate --model base.yaml --prompt hi > gen_bad2.log 2>&1; then fail "generate --model <a text file> succeeded"; fi
grep -q "\-\-model base.yaml: not an HDF5 file" gen_bad2.log || { cat gen_bad2.log; fail "no clear error for a file that is no model"; }

# 2. A given file, an older step; under mpirun too.
"$FTUNE" export --checkpoint run/checkpoints/step_00000004.h5 --out hf4 > export2.log 2>&1 || { cat export2.log; fail "export of a file failed"; }
grep -q "step 4" export2.log || { cat export2.log; fail "not step 4"; }
if [[ ${#MPIRUN[@]} -gt 0 ]]; then
  # Collective read (each rank a slice of every tensor, checksums combined): byte-identical.
  "${MPIRUN[@]}" -np 2 "$FTUNE" export --checkpoint run/checkpoints/step_00000004.h5 --out hf4b > export3.log 2>&1 \
    || { cat export3.log; fail "export under mpirun failed"; }
  for f in model.safetensors config.json generation_config.json tokenizer.json; do
    cmp hf4/$f hf4b/$f || fail "mpirun -np 2 export differs from the 1-process export in $f"
  done
  "${MPIRUN[@]}" -np 3 "$FTUNE" export --checkpoint run --out hf6c > export3c.log 2>&1 \
    || { cat export3c.log; fail "export under mpirun -np 3 failed"; }
  cmp hf/model.safetensors hf6c/model.safetensors || fail "mpirun -np 3 export differs from the 1-process export"
  # The live export at the end of a ZeRO-3 run (units gathered one at a time) and of a
  # tensor-parallel one equals the one-process export of their final checkpoints; the ZeRO-3 run's
  # end-of-run eval loss (computed layer by layer) equals the plain dp=2 run's within fp32 noise.
  for layout in "parallel.zero=3" "parallel.tp=2" "parallel.zero=0"; do
    out=live_${layout//[.=]/_}
    "${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set train.steps=3 --set "$layout" \
      --set run.output_dir="$SCRATCH/$out" > $out.log 2>&1 || { cat $out.log; fail "train with $layout failed"; }
    "$FTUNE" export --checkpoint $out --out ${out}_hf > ${out}_export.log 2>&1 || { cat ${out}_export.log; fail "export of the $layout run failed"; }
    cmp $out/final/model.safetensors ${out}_hf/model.safetensors || fail "$layout: the live export differs from its checkpoint's"
  done
  python3 - live_parallel_zero_0/metrics.jsonl live_parallel_zero_3/metrics.jsonl <<'PY' || fail "ZeRO-3's end-of-run eval loss differs from ZeRO-0's"
import json, sys
losses = []
for path in sys.argv[1:]:
    evals = [json.loads(l)["eval_loss"] for l in open(path) if '"eval_loss"' in l]
    assert evals, f"{path}: no eval_loss"
    losses.append(evals[-1])
print("end-of-run eval_loss (zero 0, zero 3):", losses)
assert all(abs(x - losses[0]) <= 1e-4 * abs(losses[0]) for x in losses), losses
PY
fi

# 3. A damaged newest checkpoint: warned about by name, the previous one is exported.
python3 - <<'PY'
import os
p = "run/checkpoints/step_00000006.h5"
size = os.path.getsize(p)
with open(p, "r+b") as f:   # damage tensor bytes in the middle of the file
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in f.read(64)))
PY
"$FTUNE" export --checkpoint run --out hf_fb > export4.log 2>&1 || { cat export4.log; fail "fallback export failed"; }
grep -q "step_00000006.h5 is unusable" export4.log || { cat export4.log; fail "no warning naming the damaged checkpoint"; }
cmp hf_fb/model.safetensors hf4/model.safetensors || fail "fallback did not export step 4"
gen run gen_fb.txt
grep -q "step_00000006.h5 is unusable" gen_fb.txt.err || { cat gen_fb.txt.err; fail "generate: no warning naming the damaged checkpoint"; }
grep -q "step_00000004.h5 (step 4)" gen_fb.txt.err || { cat gen_fb.txt.err; fail "generate did not fall back to step 4"; }
gen hf4 gen_hf4.txt
cmp gen_fb.txt gen_hf4.txt || fail "generate after the fallback differs from step 4's HF export"
if [[ ${#MPIRUN[@]} -gt 0 ]]; then
  "${MPIRUN[@]}" -np 2 "$FTUNE" export --checkpoint run --out hf_fb2 > export4b.log 2>&1 \
    || { cat export4b.log; fail "fallback export under mpirun failed"; }
  grep -q "step_00000006.h5 is unusable" export4b.log || { cat export4b.log; fail "mpirun: no warning naming the damaged checkpoint"; }
  cmp hf_fb2/model.safetensors hf4/model.safetensors || fail "mpirun fallback did not export step 4"
fi

# 4. bf16 run: exported as bfloat16 (from the fp32 masters).
"$FTUNE" train --config base.yaml --set train.steps=2 --set model.dtype=bf16 \
  --set run.output_dir="$SCRATCH/bf" > bf.log 2>&1 || { cat bf.log; fail "bf16 train failed"; }
"$FTUNE" export --checkpoint bf --out hf_bf > export5.log 2>&1 || { cat export5.log; fail "bf16 export failed"; }
grep -q '"torch_dtype": *"bfloat16"' hf_bf/config.json || { cat hf_bf/config.json; fail "not bfloat16"; }

# 5. Chat. The chat template travels with the model: a tokenizer directory with
# chat_template.jinja and generation_config.json exports both byte for byte; a run trained with
# data.chat_template = a .jinja file exports that file as chat_template.jinja (the live export at
# the end of training, and `export --checkpoint`). `ftune eval` on that run scores each assistant
# turn on its own (eval_examples.jsonl: the second turn's prompt holds the first answer), and
# `ftune generate --chat` answers conversations in the template (a checkpoint as its export).
mkdir -p tokchat
cp "$FIX"/tokenizer/tokenizer.json "$FIX"/tokenizer/tokenizer_config.json tokchat/
cat > tokchat/chat_template.jinja <<'JINJA'
{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>

{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}
JINJA
printf '{\n  "bos_token_id": 1,\n  "eos_token_id": [2, 280]\n}\n' > tokchat/generation_config.json
{ echo '{# the template this run trains with #}'; cat tokchat/chat_template.jinja; } > trained.jinja
"$FTUNE" export --config base.yaml --set tokenizer.path="$SCRATCH/tokchat" --out hf_tokchat \
  > export6.log 2>&1 || { cat export6.log; fail "export with a chat tokenizer failed"; }
for f in chat_template.jinja generation_config.json tokenizer.json tokenizer_config.json; do
  cmp tokchat/$f hf_tokchat/$f || fail "export: $f is not the tokenizer directory's, byte for byte"
done
CHAT=(--set tokenizer.path="$SCRATCH/tokchat" --set "data.inputs=[$FIX/chat.jsonl]"
      --set data.dir="$SCRATCH/chatdata" --set data.chat_template="$SCRATCH/trained.jinja"
      --set data.split.test_count=2 --set data.max_seq_len=160 --set run.output_dir="$SCRATCH/chatrun")
"$FTUNE" export --config base.yaml "${CHAT[@]}" --out hf_trained > export7.log 2>&1 \
  || { cat export7.log; fail "export with data.chat_template failed"; }
cmp trained.jinja hf_trained/chat_template.jinja || fail "export: chat_template.jinja is not data.chat_template's file"
"$FTUNE" prepare --config base.yaml "${CHAT[@]}" > chatprep.log 2>&1 || { cat chatprep.log; fail "chat prepare failed"; }
"$FTUNE" train --config base.yaml "${CHAT[@]}" --set train.steps=2 > chattrain.log 2>&1 \
  || { cat chattrain.log; fail "chat train failed"; }
"$FTUNE" export --checkpoint chatrun --out hf_chat_ck > export8.log 2>&1 || { cat export8.log; fail "chat checkpoint export failed"; }
for out in chatrun/final hf_chat_ck; do
  cmp trained.jinja $out/chat_template.jinja || fail "$out/chat_template.jinja is not the trained template"
  cmp tokchat/generation_config.json $out/generation_config.json || fail "$out/generation_config.json differs"
done
"$FTUNE" eval --config base.yaml "${CHAT[@]}" --set eval.max_samples=-1 > chateval.log 2>&1 \
  || { cat chateval.log; fail "chat eval failed"; }
python3 - chatrun/eval_examples.jsonl <<'PY' || fail "eval examples are not one per assistant turn"
import json, sys
ex = [json.loads(l) for l in open(sys.argv[1])]
by = {(e["index"], e["turn"]): e for e in ex}
assert all(e["turn"] in (0, 1) for e in ex), ex
seconds = [e for e in ex if e["turn"] == 1]
assert seconds, f"no document with a second assistant turn: {ex}"
for e in seconds:
    first = by[(e["index"], 0)]
    assert e["reference"] == first["reference"] + " again", (first, e)
    assert "Again" in e["prompt"] and "Again" not in first["prompt"], (first, e)
    assert e["prompt"].startswith(first["prompt"]), (first, e)
print(len(ex), "examples,", len(seconds), "second turns")
PY
cat > conv.jsonl <<'JSONL'
{"messages": [{"role": "user", "content": "Say 3"}]}

{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 4"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Again"}]}
JSONL
"$FTUNE" generate --model hf_chat_ck --chat conv.jsonl --jsonl --max-new-tokens 4 > chat_hf.jsonl 2> chat_hf.err \
  || { cat chat_hf.err; fail "generate --chat failed"; }
python3 - conv.jsonl chat_hf.jsonl <<'PY' || fail "generate --chat --jsonl: not the conversations with one assistant answer appended"
import json, sys
conv = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = [json.loads(l) for l in open(sys.argv[2])]
assert len(out) == len(conv) == 2, out
for c, o in zip(conv, out):
    assert o["messages"][:-1] == c["messages"], (c, o)
    last = o["messages"][-1]
    assert last["role"] == "assistant" and isinstance(last["content"], str), o
PY
"$FTUNE" generate --model chatrun --chat conv.jsonl --jsonl --max-new-tokens 4 > chat_ck.jsonl 2> chat_ck.err \
  || { cat chat_ck.err; fail "generate --chat on a checkpoint failed"; }
cmp chat_hf.jsonl chat_ck.jsonl || fail "generate --chat on the checkpoint answers otherwise than its export"
"$FTUNE" generate --model hf_chat_ck --chat - --max-new-tokens 4 < conv.jsonl > chat_plain.txt 2> chat_plain.err \
  || { cat chat_plain.err; fail "generate --chat - (stdin) failed"; }
python3 - chat_hf.jsonl chat_plain.txt <<'PY' || fail "generate --chat plain answers differ from --jsonl's"
import json, sys
answers = [json.loads(l)["messages"][-1]["content"] for l in open(sys.argv[1])]
assert open(sys.argv[2], newline="").read() == "".join(a + "\n" for a in answers)
PY
printf '{"messages": [{"role": "user", "content": "hi"}]}\n{"message": []}\n' > bad_chat.jsonl
if "$FTUNE" generate --model hf_chat_ck --chat bad_chat.jsonl > gen_bad3.log 2>&1; then fail "generate --chat with a bad line succeeded"; fi
grep -q "bad_chat.jsonl:2: expected a JSON object with a \"messages\" array" gen_bad3.log || { cat gen_bad3.log; fail "no FILE:line error for a bad --chat line"; }
if "$FTUNE" generate --model hf_chat_ck --chat conv.jsonl --prompt hi > gen_bad4.log 2>&1; then fail "--chat with --prompt succeeded"; fi
mkdir -p tok_nochat  # the fixture tokenizer without its chat template
cp "$FIX"/tokenizer/tokenizer.json tok_nochat/
python3 - "$FIX"/tokenizer/tokenizer_config.json tok_nochat/tokenizer_config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.pop("chat_template", None)
json.dump(c, open(sys.argv[2], "w"))
PY
NOCHAT=(--model hf --tokenizer tok_nochat --chat conv.jsonl --max-new-tokens 2)
if "$FTUNE" generate "${NOCHAT[@]}" > gen_bad5.log 2>&1; then fail "generate --chat without any chat template succeeded"; fi
grep -q "\-\-chat-template" gen_bad5.log || { cat gen_bad5.log; fail "no chat template: the error does not name --chat-template"; }
"$FTUNE" generate "${NOCHAT[@]}" --chat-template trained.jinja > gen_ct.txt 2> gen_ct.err \
  || { cat gen_ct.err; fail "generate --chat --chat-template FILE failed"; }
echo PASS
