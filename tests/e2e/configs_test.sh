#!/usr/bin/env bash
# e2e: every config shipped in configs/ does what its comment says, from the repository root:
# the runnable ones prepare and train (2 steps), the real-model ones `plan` as their comment
# shows. A new config must be added here (the test fails on one it does not know).
# Usage: configs_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
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
  if ! "$@" > "$S/$log" 2>&1; then cat "$S/$log"; echo "FAIL: $* (see $S/$log)"; fail=1; return 1; fi
}
short=(--set train.epochs=-1 --set train.steps=2 --set run.threads=1)

# Every config is covered below.
for c in configs/*.yaml; do
  case $(basename "$c") in
    tiny.yaml|demo_pretrain.yaml|demo_finetune.yaml|llama3_8b.yaml|llama3_70b.yaml) ;;
    llama3_1_8b_128k.yaml) ;;
    *) echo "FAIL: $c is not covered by this test"; fail=1 ;;
  esac
  check "$c starts with a comment saying what it is for" "head -1 $c | grep -q '^# '"
done

# tiny: as its comment says (prepare, then train under mpirun), 2 steps.
run tiny_prepare.out "$FTUNE" prepare --config configs/tiny.yaml --set run.output_dir="$S/tiny" &&
  run tiny_train.out $MPIRUN -np 2 "$FTUNE" train --config configs/tiny.yaml \
    --set run.output_dir="$S/tiny" --set train.steps=2 &&
  check "tiny trained 2 steps" "grep -q '\"step\":2,' $S/tiny/metrics.jsonl"
check "the console shows the keys that differ from the defaults, not every key" \
  "grep -q 'keys differ from the defaults' $S/tiny_train.out && ! grep -q 'optim.weight_decay' $S/tiny_train.out"
check "the run directory keeps the resolved config in full" "grep -q 'weight_decay' $S/tiny/train_config.yaml"

# demo_pretrain -> demo_finetune (its model.path is the pretrain's export), 2 steps each.
run pre_prepare.out "$FTUNE" prepare --config configs/demo_pretrain.yaml --set run.output_dir="$S/pre" &&
  run pre_train.out "$FTUNE" train --config configs/demo_pretrain.yaml --set run.output_dir="$S/pre" "${short[@]}" &&
  check "demo_pretrain exported its model" "[ -f $S/pre/final/model.safetensors ]"
run ft_prepare.out "$FTUNE" prepare --config configs/demo_finetune.yaml --set run.output_dir="$S/ft" \
    --set model.path="$S/pre/final" &&
  run ft_train.out "$FTUNE" train --config configs/demo_finetune.yaml --set run.output_dir="$S/ft" \
    --set model.path="$S/pre/final" "${short[@]}" &&
  check "demo_finetune exported its model" "[ -f $S/ft/final/model.safetensors ]"

# The real-model configs: `ftune plan` exactly as their comments show, and the layout they set
# is the one the plan recommends.
for c in configs/llama3_8b.yaml configs/llama3_70b.yaml configs/llama3_1_8b_128k.yaml; do
  cmd=$(sed -n 's/^#   ftune plan /plan /p' "$c" | head -1)
  [ -n "$cmd" ] || { echo "FAIL: $c has no '#   ftune plan ...' line"; fail=1; continue; }
  # shellcheck disable=SC2086  # the comment's words
  if run "$(basename "$c").plan" "$FTUNE" $cmd --set run.output_dir="$S/plan"; then
    python3 - "$c" "$S/$(basename "$c").plan" <<'PY' && echo "ok: $c sets the layout its plan recommends" || { echo "FAIL: $c layout vs plan"; fail=1; }
import re, sys
cfg, out = open(sys.argv[1]).read(), open(sys.argv[2]).read()
rec = re.search(r"^recommended: (.*)$", out, re.M)
assert rec, out[-2000:]
line = rec.group(1)
def key(k):
    m = re.search(r"^\s*%s:\s*(\S+)" % k, cfg, re.M)
    return m.group(1) if m else None
for k in ("tp", "zero"):
    want = re.search(r"parallel\.%s=(\d+)" % k, line)
    assert want and key(k) == want.group(1), (k, key(k), line)
cp = re.search(r"parallel\.cp=(\d+)", line)
assert (cp.group(1) if cp else None) == key("cp"), ("cp", key("cp"), line)
ac = re.search(r"train\.activation_checkpointing=(\S+)", line)
assert ac and key("activation_checkpointing") == ac.group(1), (key("activation_checkpointing"), line)
if "--max-seq" in cfg:
    m = re.search(r"^longest sequence of this config's layout .*: (\d+) tokens", out, re.M)
    assert m and int(m.group(1)) >= int(key("max_seq_len")), out[-600:]
PY
  fi
done

[ $fail -eq 0 ] && echo "PASS: every shipped config" || echo "FAIL: shipped configs"
exit $fail
