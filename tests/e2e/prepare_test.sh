#!/usr/bin/env bash
# e2e: `ftune prepare` from the CLI: summary, files, preview, the output-directory rules,
# bad inputs, and byte-identical output under mpirun -np 2 / 3.
# Usage: prepare_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
set -euo pipefail
FTUNE=$1
SCRATCH=$2
FIX="${FTUNE_SOURCE_DIR:?}/tests/fixtures/data"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
cd "$SCRATCH"
fail() { echo "FAIL: $*" >&2; exit 1; }

cat > config.yaml <<YAML
run:
  output_dir: $SCRATCH/run
tokenizer:
  path: $FIX/tokenizer
data:
  inputs: ["$FIX/qa.jsonl", "$FIX/alpaca.jsonl", "$FIX/chat.jsonl"]
  dir: data
  max_seq_len: 512
  shard_tokens: 2048
  split:
    test_ratio: 0.2
YAML

# 1. prepare: summary on stdout, files in run/data, manifest last.
"$FTUNE" prepare --config config.yaml > out1.txt 2> err1.txt || { cat out1.txt err1.txt; fail "prepare failed"; }
grep -q "records read" out1.txt || fail "no summary on stdout"
grep -q "invalid_json .*qa.jsonl:5" out1.txt || { cat out1.txt; fail "reject line numbers missing"; }
grep -q "tokens/s" out1.txt || fail "no throughput line"
for f in manifest.json prepare_summary.json train-00000.h5 test-00000.h5; do
  [[ -f run/data/$f ]] || fail "run/data/$f missing"
done
ls run/data | grep -q tmp && fail "temporary files left behind"
if command -v h5ls > /dev/null; then
  h5ls run/data/train-00000.h5 | grep -q "tokens" || fail "h5ls does not see /tokens"
fi
python3 - <<PY || fail "summary JSON"
import json
s = json.load(open("run/data/prepare_summary.json"))
assert s["records_read"] == 44 + 8 + 7, s["records_read"]
assert s["kept"]["train"] + s["kept"]["test"] == 40 + 8 + 6, s["kept"]
assert s["rejected"]["wrong_type"]["count"] == 2
m = json.load(open("run/data/manifest.json"))
assert m["splits"]["train"]["num_docs"] == s["kept"]["train"]
PY

# 2. --preview prints marked examples and writes nothing.
"$FTUNE" prepare --config config.yaml --preview 2 --set data.dir=preview > prev.txt 2>&1 || fail "preview failed"
grep -q "\[PROMPT\]" prev.txt || { cat prev.txt; fail "preview has no [PROMPT] marks"; }
[[ ! -e run/preview/manifest.json ]] || fail "preview wrote a dataset"

# 3. Same dataset again: fine. A different one: refused unless --overwrite.
"$FTUNE" prepare --config config.yaml > /dev/null 2>&1 || fail "re-running the same prepare failed"
if "$FTUNE" prepare --config config.yaml --set "data.inputs=[\"$FIX/text.jsonl\"]" > other.txt 2>&1; then
  fail "a different dataset overwrote run/data without --overwrite"
fi
grep -q -- "--overwrite" other.txt || { cat other.txt; fail "no --overwrite hint"; }
"$FTUNE" prepare --config config.yaml --set "data.inputs=[\"$FIX/text.jsonl\"]" --overwrite \
  --set data.dir=data_text > /dev/null 2>&1 || fail "--overwrite failed"

# 4. Bad inputs: a glob matching nothing; zero records; strict mode.
if "$FTUNE" prepare --config config.yaml --set "data.inputs=[\"$SCRATCH/none-*.jsonl\"]" \
     --set data.dir=d2 > glob.txt 2>&1; then fail "a glob matching nothing succeeded"; fi
grep -q "none-\*.jsonl" glob.txt || { cat glob.txt; fail "glob error does not name the pattern"; }
if "$FTUNE" prepare --config config.yaml --set "data.inputs=[\"$FIX/empty.jsonl\"]" \
     --set data.dir=d3 > zero.txt 2>&1; then fail "zero records succeeded"; fi
[[ ! -e run/d3/manifest.json ]] || fail "a failed prepare left a manifest"
if "$FTUNE" prepare --config config.yaml --set data.strict=true --set data.dir=d4 > strict.txt 2>&1; then
  fail "strict mode accepted bad records"
fi
grep -q "qa.jsonl:5" strict.txt || { cat strict.txt; fail "strict error does not name file:line"; }

# 5. Under mpirun the output is byte-identical to the 1-rank output.
if [[ -n "${FTUNE_MPIEXEC:-}" ]]; then
  for np in 2 3; do
    "$FTUNE_MPIEXEC" -np $np --oversubscribe --allow-run-as-root --bind-to none \
      "$FTUNE" prepare --config config.yaml --set data.dir=data_np$np > np$np.txt 2>&1 \
      || { cat np$np.txt; fail "prepare under mpirun -np $np failed"; }
    for f in run/data/*; do
      cmp "$f" "run/data_np$np/$(basename "$f")" || fail "$(basename "$f") differs at np=$np"
    done
  done
else
  echo "FTUNE_MPIEXEC unset: mpirun part skipped"
fi
echo "e2e prepare: OK"
