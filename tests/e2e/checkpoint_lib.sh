#!/usr/bin/env bash
# Shared by the checkpoint e2e tests (resume, preempt, rank death, hung rank, export, disk
# full); sourced, not run (CTest runs *_test.sh only). Usage in a test: source "$(dirname "$0")/checkpoint_lib.sh" "$@"
set -euo pipefail
FTUNE=$1
SCRATCH=$2
FIX="${FTUNE_SOURCE_DIR:?}/tests/fixtures/data"
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
cd "$SCRATCH"
export OMP_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }

# mpirun as root on 2 shared cores; empty MPIRUN when FTUNE_MPIEXEC is unset.
MPIRUN=()
if [[ -n "${FTUNE_MPIEXEC:-}" ]] && command -v "$FTUNE_MPIEXEC" > /dev/null; then
  MPIRUN=("$FTUNE_MPIEXEC" --allow-run-as-root --oversubscribe --bind-to none)
fi
need_mpirun() { [[ ${#MPIRUN[@]} -gt 0 ]] || { echo "SKIP: no mpirun (FTUNE_MPIEXEC)"; exit 77; }; }

# base.yaml: the tiny model on tests/fixtures/data/qa.jsonl, prepared once into $SCRATCH/data.
write_config() {
  cat > base.yaml <<YAML
run:
  output_dir: $SCRATCH/run
  seed: 7
tokenizer:
  path: $FIX/tokenizer
model:
  arch: {vocab_size: 512, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
         num_attention_heads: 4, num_key_value_heads: 2}
data:
  inputs: ["$FIX/qa.jsonl"]
  max_seq_len: 64
  dir: $SCRATCH/data
train: {steps: 12, micro_batch: 2}
optim: {lr: 3.0e-3, warmup_steps: 2}
checkpoint: {every: 2, keep: 2}
eval: {max_samples: 2, max_new_tokens: 4}
log: {progress: lines}
parallel: {timeout_s: 60}
YAML
  "$FTUNE" prepare --config base.yaml > prepare.log 2>&1 || { cat prepare.log; fail "prepare failed"; }
}

# "step loss" per step of a metrics.jsonl, the LAST line of each step winning (a resumed run
# appends the steps after its checkpoint again). Losses as JSON prints them: 17 digits, exact.
losses() {
  python3 - "$1" <<'PY'
import json, sys
last = {}
for line in open(sys.argv[1]):
    j = json.loads(line)
    if "step" in j and "loss" in j and "eval_loss" not in j:
        last[j["step"]] = j["loss"]
for s in sorted(last):
    print(s, repr(last[s]))
PY
}

# Compares two loss lists: exact (tol 0) or within a relative tolerance, from step $3 on.
compare_losses() {  # file_a file_b first_step rel_tol
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import sys
def load(p):
    return {int(a): float(b) for a, b in (l.split() for l in open(p) if l.strip())}
a, b, first, tol = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
steps = [s for s in sorted(a) if s >= first]
assert steps, "no steps to compare"
assert set(s for s in b if s >= first) == set(steps), f"steps differ: {sorted(a)} vs {sorted(b)}"
worst = 0.0
for s in steps:
    d = abs(a[s] - b[s]) / max(abs(a[s]), 1e-12)
    worst = max(worst, d)
    if (tol == 0 and a[s] != b[s]) or d > tol:
        sys.exit(f"step {s}: loss {a[s]!r} vs {b[s]!r} (rel diff {d:.3g}, tolerance {tol})")
print(f"losses of steps {steps[0]}..{steps[-1]} match (max rel diff {worst:.3g}, tolerance {tol})")
PY
}

# Waits until metrics.jsonl $1 has a line of step >= $2 (at most $3 seconds).
wait_for_step() {
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    if [[ -f $1 ]] && python3 - "$1" "$2" <<'PY'
import json, sys
n = int(sys.argv[2])
steps = [json.loads(l).get("step", 0) for l in open(sys.argv[1]) if l.strip()]
sys.exit(0 if steps and max(steps) >= n else 1)
PY
    then return 0; fi
    sleep 0.05
  done
  fail "step $2 did not appear in $1 within $3 s"
}

# Whether pid $1 is a live process (a zombie waiting to be reaped is dead).
alive() { local st; st=$(ps -o stat= -p "$1" 2> /dev/null) && [[ -n $st && $st != Z* ]]; }

# PID of rank $2 among the children of mpirun $1 (by OMPI_COMM_WORLD_RANK).
rank_pid() {
  local p
  for p in $(ps -o pid= --ppid "$1"); do
    if tr '\0' '\n' < /proc/$p/environ 2> /dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
      echo "$p"; return 0
    fi
  done
  return 1
}

latest_of() { cat "$1/latest"; }
# The step of a checkpoint file name: step_00000042.h5 -> 42.
step_of() { local s=${1#step_}; s=${s%.h5}; echo $((10#$s)); }
