#!/usr/bin/env bash
# Profiling (runtime/profiler.h) on 2 ranks: train.profile's window and `ftune bench train
# --profile DIR` each write one Chrome trace per rank that parses as JSON and holds the step's
# phase ranges and libtorch ops, and rank 0 prints the top-ops table; a bad train.profile value
# or key is an error naming it. Usage: profile_test.sh FTUNE SCRATCH
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
need_mpirun
write_config

# Each trace in $1 (rank0, rank1): JSON with the four phases and at least one aten:: op.
check_traces() {
  python3 - "$1" <<'PY'
import json, sys
for rank in (0, 1):
    path = f"{sys.argv[1]}/rank{rank}.pt.trace.json"
    events = json.load(open(path))["traceEvents"]
    names = {e.get("name", "") for e in events}
    for phase in ("forward", "backward", "optimizer", "communication"):
        assert f"ftune::{phase}" in names, (path, phase)
    ops = sorted(n for n in names if n.startswith("aten::"))
    assert ops, (path, "no aten:: op")
    print(f"{path}: {len(events)} events, {len(ops)} distinct aten ops, e.g. {ops[:3]}")
PY
}

"${MPIRUN[@]}" -np 2 "$FTUNE" train --config base.yaml --set run.threads=1 --set train.steps=4 \
  --set checkpoint.every=0 --set train.profile.start=2 --set train.profile.steps=2 \
  > train.out 2>&1 || { cat train.out; fail "profiled ftune train failed"; }
check_traces "$SCRATCH/run/profile" || { cat train.out; fail "bad traces of ftune train"; }
grep -q "profiled steps 2-3" train.out || { cat train.out; fail "no profile summary on rank 0"; }
grep -A3 "top .* ops by self CPU time" train.out | grep -q "aten::" ||
  { cat train.out; fail "no top-ops table"; }
grep -q "phases (inclusive):.*ftune::backward" train.out || { cat train.out; fail "no phase times"; }

"${MPIRUN[@]}" -np 2 "$FTUNE" bench train --config base.yaml --set run.threads=1 \
  --set run.output_dir="$SCRATCH/bench" --warmup 1 --steps 1 --gemm-n 64 --profile bench_profile \
  > bench.out 2>&1 || { cat bench.out; fail "ftune bench train --profile failed"; }
check_traces "$SCRATCH/bench_profile" || { cat bench.out; fail "bad traces of bench --profile"; }
grep -q "profiled steps 2-2" bench.out || { cat bench.out; fail "bench: no profile summary"; }
tail -1 bench.out | python3 -c 'import json, sys; assert json.load(sys.stdin)["profile_dir"]' ||
  { cat bench.out; fail "bench: no profile_dir in the JSON line"; }

# Bad values and keys name the key.
if "$FTUNE" train --config base.yaml --set train.profile.steps=0 > bad.out 2>&1; then
  fail "train.profile.steps=0 was accepted"
fi
grep -q "train.profile.steps" bad.out || { cat bad.out; fail "error does not name train.profile.steps"; }
if "$FTUNE" train --config base.yaml --set train.profile.first=2 > bad.out 2>&1; then
  fail "unknown key train.profile.first was accepted"
fi
grep -q "train.profile.first" bad.out || { cat bad.out; fail "error does not name train.profile.first"; }
echo PASS
