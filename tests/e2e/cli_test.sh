#!/usr/bin/env bash
# The CLI's foundation end to end: env under mpirun, config errors printed once
# with a non-zero exit and no hung rank, pending subcommands refusing honestly.
set -uo pipefail
FTUNE=$1; WORK=$2
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"
MPIRUN="${FTUNE_MPIEXEC:-mpirun} --oversubscribe --allow-run-as-root"
fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }

$MPIRUN -np 2 "$FTUNE" env > env.out 2>&1; rc=$?
check "env exits 0 at 2 ranks" "[ $rc -eq 0 ]"
check "env lists both ranks" "grep -q 'rank 0/2' env.out && grep -q 'rank 1/2' env.out"
check "env names library versions" "grep -q 'libtorch' env.out && grep -q 'HDF5' env.out"

printf 'run:\n  output_dir: %s/run\ntrain:\n  micro_bach: 3\n' "$WORK" > bad.yaml
timeout 120 $MPIRUN -np 2 "$FTUNE" env --config bad.yaml > bad.out 2>&1; rc=$?
check "unknown key exits non-zero (not a timeout)" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
check "unknown key message names file:line, key and fix" \
  "grep -q 'bad.yaml:4: train.micro_bach: unknown key; did you mean .train.micro_batch.' bad.out"
check "config error printed once" "[ \$(grep -c 'unknown key' bad.out) -eq 1 ]"

printf 'run:\n  output_dir: %s/run\nparallel:\n  dp: 3\n' "$WORK" > layout.yaml
timeout 120 $MPIRUN -np 2 "$FTUNE" env --config layout.yaml > layout.out 2>&1; rc=$?
check "dp*tp != world size exits non-zero" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
check "layout error names both keys and the world size" \
  "grep -q 'parallel.dp \* parallel.cp \* parallel.tp = 3 \* 1 \* 1 does not equal the world size 2' layout.out"

printf 'run:\n  output_dir: %s/run\ntrain:\n  micro_batch: 3\n' "$WORK" > good.yaml
$MPIRUN -np 2 "$FTUNE" env --config good.yaml --set optim.lr=0.5 > good.out 2>&1; rc=$?
check "valid config accepted" "[ $rc -eq 0 ]"
check "resolved config table printed" "grep -qE 'train.micro_batch +\| 3' good.out && grep -qE 'optim.lr +\| 0.5' good.out"
check "resolved YAML written to the run dir" "grep -q 'micro_batch: 3' run/env_config.yaml"
check "per-rank log files" "[ -f run/logs/rank_0.log ] && [ -f run/logs/rank_1.log ]"

# A newcomer's first try: a config-driven command without --config says a config is needed and
# where examples are (it used to answer "set exactly one of train.steps (-1) and ...").
for cmd in train prepare eval "bench train"; do
  timeout 120 "$FTUNE" $cmd > noconfig.out 2>&1; rc=$?
  check "ftune $cmd without --config points to configs/" "[ $rc -ne 0 ] && [ $rc -ne 124 ] && \
    grep -q 'ftune .* needs a config: --config FILE' noconfig.out && grep -q 'configs/tiny.yaml' noconfig.out"
done

"$FTUNE" plan > plan.out 2>&1; rc=$?
check "plan without --config refuses with non-zero exit, naming the option" "[ $rc -ne 0 ] && grep -q -- '--config' plan.out"
exit $fail
