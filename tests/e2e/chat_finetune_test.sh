#!/usr/bin/env bash
# e2e: chat finetuning with the model's own chat template, end to end under mpirun -np 2:
#   a tokenizer directory with a Llama-3.1-style chat_template.jinja (written for this test: a
#   system header with the knowledge and today's date, then one header per turn, <|eot_id|>
#   after each) and a generation_config.json stopping at <|eot_id|> -> prepare a multi-turn chat
#   set (each assistant turn and its <|eot_id|> trained, nothing else) -> train a tiny model
#   from scratch -> eval (each held-out assistant turn scored on its own, the conversation
#   before it as prompt) -> export (chat_template.jinja and generation_config.json byte-identical
#   to the input's) -> generate --chat with the exported model (stops at <|eot_id|>).
# Usage: chat_finetune_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
set -uo pipefail
FTUNE=$(readlink -f "$1")
S=$2
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

# --- the tokenizer directory: the fixture tokenizer, a chat template file, a generation config
TOK=$S/tokenizer
mkdir -p "$TOK"
cp tests/fixtures/data/tokenizer/tokenizer.json "$TOK/"
python3 - "$TOK" <<'PY'
import json, sys
d = sys.argv[1]
cfg = json.load(open("tests/fixtures/data/tokenizer/tokenizer_config.json"))
del cfg["chat_template"]  # chat_template.jinja below is the template (transformers 5's layout)
json.dump(cfg, open(f"{d}/tokenizer_config.json", "w"), indent=1)
open(f"{d}/chat_template.jinja", "w").write(
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system_message = '' %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- set date_string = '26 Jul 2024' %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}\n"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}\n"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}\n"
    "{{- system_message + '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] not in ['user', 'assistant'] %}\n"
    "        {{- raise_exception('Only user and assistant roles follow the system message') }}\n"
    "    {%- endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "    {{- message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n")
json.dump({"bos_token_id": 1, "eos_token_id": [2, 280]}, open(f"{d}/generation_config.json", "w"),
          indent=2)
# Two assistant turns per conversation: say a number, then say it twice.
with open(f"{d}/../chats.jsonl", "w") as f:
    for n in range(300):
        f.write(json.dumps({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Say {n}"},
            {"role": "assistant", "content": f"{n}"},
            {"role": "user", "content": "Twice"},
            {"role": "assistant", "content": f"{n} {n}"}]}) + "\n")
    f.write(json.dumps({"messages": [{"role": "system", "content": "x"},
                                     {"role": "tool", "content": "y"}]}) + "\n")
PY

cat > "$S/chat.yaml" <<EOF
run: {name: chat, output_dir: $S/run, seed: 7, threads: 1}
tokenizer: {path: $TOK}
model:
  dtype: fp32
  init_seed: 7
  arch: {vocab_size: 288, hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256,
         tie_word_embeddings: false}
data:
  inputs: [$S/chats.jsonl]
  dir: data
  max_seq_len: 224
  split: {test_count: 10}
train: {steps: 40, micro_batch: 8}
optim: {lr: 3.0e-3, warmup_steps: 5}
eval: {every: 0, generate: true, max_samples: -1, batch_size: 8, max_new_tokens: 12}
log: {every: 10}
EOF

# 1. prepare: the template's own text, each assistant turn + <|eot_id|> trained.
run preview.out "$FTUNE" prepare --config "$S/chat.yaml" --preview 1
check "preview shows the template's system header, prompt parts untrained" \
  "grep -q 'Today Date: 26 Jul 2024' $S/preview.out && grep -q '\[PROMPT\]' $S/preview.out"
run prepare.out $MPIRUN -np 2 "$FTUNE" prepare --config "$S/chat.yaml"
python3 - "$S/run/data/prepare_summary.json" <<'PY' && echo "ok: prepare kept 300, rejected the tool turn by the template's raise_exception" || { echo "FAIL: prepare summary"; fail=1; }
import json, sys
s = json.load(open(sys.argv[1]))
assert s["kept"]["train"] + s["kept"]["test"] == 300, s["kept"]
r = s["rejected"]["template_error"]
assert r["count"] == 1 and r["first_lines"][0].endswith("chats.jsonl:301"), r
assert "Only user and assistant roles" in r["first_detail"], r
PY
# The trained tokens of one conversation, by `ftune chat-render --training`.
echo '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 7"}, {"role": "assistant", "content": "7"}, {"role": "user", "content": "Twice"}, {"role": "assistant", "content": "7 7"}]}' |
  "$FTUNE" chat-render --tokenizer "$TOK" --cases - --training > "$S/render.jsonl" 2>&1
python3 - "$S/render.jsonl" <<'PY' && echo "ok: the trained spans are the two answers with their <|eot_id|>" || { echo "FAIL: chat-render --training"; cat "$S/render.jsonl"; fail=1; }
import json, sys
r = json.loads(open(sys.argv[1]).read())
spans = [r["text"][b:e] for b, e in r["trained"]]
assert spans == ["7<|eot_id|>", "7 7<|eot_id|>"], spans
assert len(r["ids"]) == len(r["mask"]) and r["ids"][0] == 1 and r["mask"][0] == 0, r
assert r["ids"][-1] == 280 and r["mask"][-1] == 1, r
PY

# 2. train from scratch under mpirun -np 2; eval at the end scores each assistant turn.
run train.out $MPIRUN -np 2 "$FTUNE" train --config "$S/chat.yaml"
python3 - "$S/run/metrics.jsonl" <<'PY' && echo "ok: the loss fell" || { echo "FAIL: loss"; fail=1; }
import json, sys
losses = [json.loads(l)["loss"] for l in open(sys.argv[1]) if '"loss"' in l]
assert len(losses) >= 4 and losses[-1] < 0.7 * losses[0], losses
PY
run eval.out $MPIRUN -np 2 "$FTUNE" eval --config "$S/chat.yaml"
python3 - "$S/run" <<'PY' && echo "ok: eval scored 20 turns of 10 conversations, each with the conversation before it" || { echo "FAIL: eval per turn"; fail=1; }
import json, sys, glob
d = sys.argv[1]
ex = [json.loads(l) for l in open(glob.glob(f"{d}/**/eval_examples.jsonl", recursive=True)[0])]
assert len(ex) == 20, len(ex)
by_doc = {}
for e in ex:
    by_doc.setdefault(e["index"], {})[e["turn"]] = e
for doc in by_doc.values():
    assert sorted(doc) == [0, 1], doc
    n = doc[0]["reference"]
    assert doc[1]["reference"] == f"{n} {n}", doc
    assert f"Say {n}" in doc[0]["prompt"] and "Twice" not in doc[0]["prompt"], doc[0]
    assert f"Say {n}" in doc[1]["prompt"] and doc[1]["prompt"].rstrip().endswith("assistant"), doc[1]
    assert "Twice" in doc[1]["prompt"], doc[1]
PY

# 3. export keeps the chat template and the generation config, byte for byte.
check "export kept chat_template.jinja" "cmp $TOK/chat_template.jinja $S/run/final/chat_template.jinja"
check "export kept generation_config.json" "cmp $TOK/generation_config.json $S/run/final/generation_config.json"
check "export kept tokenizer_config.json" "cmp $TOK/tokenizer_config.json $S/run/final/tokenizer_config.json"

# 4. generate --chat with the exported model: rendered with add_generation_prompt, stopped at
#    <|eot_id|> (generation_config.json) or the token limit, the answer appended as a message.
printf '%s\n' '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say 12"}]}' \
  '{"messages": [{"role": "user", "content": "Say 3"}, {"role": "assistant", "content": "3"}, {"role": "user", "content": "Twice"}]}' > "$S/ask.jsonl"
run generate.out "$FTUNE" generate --model "$S/run/final" --chat "$S/ask.jsonl" --jsonl --max-new-tokens 12
python3 - "$S/generate.out" <<'PY' && echo "ok: generate --chat answered both conversations" || { echo "FAIL: generate --chat"; cat "$S/generate.out"; fail=1; }
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
assert len(recs) == 2, recs
for r in recs:
    m = r["messages"]
    assert m[-1]["role"] == "assistant" and isinstance(m[-1]["content"], str), r
    assert "<|eot_id|>" not in m[-1]["content"], r
print([r["messages"][-1]["content"] for r in recs])
PY
# A model whose tokenizer has no chat template: a clear error naming what to pass.
run bare.out cp -r "$S/run/final" "$S/bare"
rm -f "$S/bare/chat_template.jinja"
if "$FTUNE" generate --model "$S/bare" --chat "$S/ask.jsonl" > "$S/bare_gen.out" 2>&1; then
  echo "FAIL: generate --chat without a template succeeded"; fail=1
else
  check "generate --chat without a template names --chat-template" "grep -q -- '--chat-template' $S/bare_gen.out"
fi

[ $fail -eq 0 ] && echo "PASS: chat finetune end to end" || echo "FAIL: chat finetune end to end"
exit $fail
