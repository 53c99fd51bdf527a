#!/usr/bin/env bash
# One command that checks ftune on a fresh GPU machine, within a deadline of its own: builds with
# cluster/gpu_build.sh (or reuses the build), prints the GPU and library versions, runs
# `ctest -L 'unit|mpi|gpu'`, and trains the tiny model on the GPU with a checkpoint, a kill -9 and
# a resume, comparing the losses with an uninterrupted run. Prints a table last (step, what,
# seconds, result) and exits non-zero if any step failed.
#
#   cluster/gpu_check.sh [BUNDLE.tar]    # the bundle: only where FTUNE_DEPS does not hold it yet
#
# Environment (besides gpu_build.sh's: FTUNE_DEPS, BUILD_DIR, PYTHON, Torch_DIR, NCCL_ROOT, ...):
#   OUT                  directory for the logs and the table (default BUILD_DIR/gpu_check)
#   FTUNE_CHECK_DEADLINE seconds for everything (default 540); each step gets what is left
#   FTUNE_CHECK_RANKS    ranks of the training check (default 1; > 1 under mpirun, one per GPU)
#   FTUNE_CHECK_STEPS    training steps (default 300; a checkpoint every 50, the kill after one)
#   FTUNE_CHECK_TOL      relative loss tolerance after the resume when the build has no
#                        run.deterministic (default 1e-3); with it the losses must be equal
#   FTUNE_CHECK_BUILD    0: no build; check the build in BUILD_DIR as it is (its env.sh when it
#                        has one, else the system's mpirun), e.g. a second check after a fix
# Without a CUDA device (or with a CPU libtorch) the gpu tests skip and the training check runs
# on the CPU, which says so in its row.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
START=$SECONDS
DEADLINE=$((START + ${FTUNE_CHECK_DEADLINE:-540}))
BUILD_DIR=$(realpath -m "${BUILD_DIR:-build-gpu}")
export BUILD_DIR
OUT=$(realpath -m "${OUT:-$BUILD_DIR/gpu_check}")
RANKS=${FTUNE_CHECK_RANKS:-1}
STEPS=${FTUNE_CHECK_STEPS:-300}
EVERY=50
CORES=$(getconf _NPROCESSORS_ONLN)
mkdir -p "$OUT"
ROWS=()
FAILED=0
row() {  # step what seconds result
  ROWS+=("| $1 | $2 | $3 | $4 |")
  [[ $4 == PASS* || $4 == SKIP* ]] || FAILED=1
  echo "gpu_check.sh: $1: $4 ($3 s) - $2"
}
left() { echo $((DEADLINE - SECONDS)); }
summary() {
  {
    echo
    echo "gpu_check.sh: $(date -u '+%F %T') UTC on $(hostname), $CORES cores, logs in $OUT"
    echo "| step | what | seconds | result |"
    echo "| --- | --- | ---: | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo "| total | deadline ${FTUNE_CHECK_DEADLINE:-540} s | $((SECONDS - START)) | $( ((FAILED)) && echo FAIL || echo PASS) |"
  } | tee "$OUT/summary.md"
}
trap 'summary' EXIT
# Open MPI's shared-memory transport copies with CMA (process_vm_readv), which containers
# often forbid: plain copies through the shared segment instead.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}

# --- 1. build ------------------------------------------------------------------------------
t=$SECONDS
if [[ ${FTUNE_CHECK_BUILD:-1} == 0 ]]; then
  [[ -x $BUILD_DIR/ftune ]] || { echo "gpu_check.sh: FTUNE_CHECK_BUILD=0 but no $BUILD_DIR/ftune" >&2; exit 1; }
  [[ -f $BUILD_DIR/env.sh ]] || printf 'export FTUNE=%q\n' "$BUILD_DIR/ftune" > "$OUT/env.sh"
  row build "not built (FTUNE_CHECK_BUILD=0): $BUILD_DIR as it is" $((SECONDS - t)) PASS
elif timeout "$(left)" cluster/gpu_build.sh "$@" > "$OUT/build.log" 2>&1; then
  row build "cluster/gpu_build.sh, $(sed -n 's/.*built in \([0-9]*\) s with \([0-9]*\) jobs.*/\1 s compiling, \2 jobs/p' "$OUT/build.log")" $((SECONDS - t)) PASS
else
  tail -n 30 "$OUT/build.log"
  row build "cluster/gpu_build.sh (log: build.log)" $((SECONDS - t)) FAIL
  exit 1
fi
# shellcheck disable=SC1091
if [[ -f $BUILD_DIR/env.sh ]]; then source "$BUILD_DIR/env.sh"; else source "$OUT/env.sh"; fi
MPIRUN="mpirun --allow-run-as-root --oversubscribe --bind-to none"

# --- 2. the GPU and the libraries ----------------------------------------------------------
t=$SECONDS
GPUS=0
if command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
  GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
  row gpu "$GPUS x $gpu" $((SECONDS - t)) PASS
else
  row gpu "no nvidia-smi or no driver: GPU parts skip" $((SECONDS - t)) "SKIP"
fi
t=$SECONDS
env_np=$((GPUS > 1 ? GPUS : 1))
if timeout 120 $MPIRUN -np "$env_np" "$FTUNE" env > "$OUT/env.log" 2>&1; then
  libs=$(sed -n 's/^ *libtorch/libtorch/p' "$OUT/env.log" | head -n 1 | sed 's/ | /, /g')
  dev=$(sed -n 's/.*rank 0\/[0-9]* .*| device \([^ |]*\).*/\1/p' "$OUT/env.log")
  row env "$libs; rank 0 on $dev" $((SECONDS - t)) PASS
else
  tail -n 20 "$OUT/env.log"
  row env "mpirun -np $env_np ftune env (log: env.log)" $((SECONDS - t)) FAIL
fi
DEVICE=cpu
grep -q '| device cuda' "$OUT/env.log" 2> /dev/null && DEVICE=cuda

# --- 3. the tests --------------------------------------------------------------------------
t=$SECONDS
# Keep time for the training check: 25 s on an H200 (2026-11-28), 81 s on 2 CPU cores.
reserve=150
[[ $DEVICE == cuda ]] && reserve=60
budget=$(($(left) - reserve))
if ((budget < 60)); then
  row ctest "unit|mpi|gpu: not started, $(left) s left" 0 "FAIL (deadline)"
else
  rc=0
  (cd "$BUILD_DIR" && timeout "$budget" ctest -L 'unit|mpi|gpu' -j "$CORES" --timeout 300 \
    --output-on-failure) > "$OUT/ctest.log" 2>&1 || rc=$?
  total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$OUT/ctest.log")
  nfail=$(sed -n 's/.* \([0-9]*\) tests failed out of.*/\1/p' "$OUT/ctest.log")
  nskip=$(grep -c '(Skipped)' "$OUT/ctest.log" || true)
  what="unit|mpi|gpu: ${total:-?} tests, ${nfail:-?} failed, $nskip skipped"
  if ((rc == 124)); then
    row ctest "$what; stopped after $budget s (log: ctest.log)" $((SECONDS - t)) "FAIL (deadline)"
  elif ((rc != 0)); then
    sed -n '/The following tests FAILED/,$p' "$OUT/ctest.log" | grep -E '^\s+[0-9]+ - ' | head -n 20
    row ctest "$what (list above, log: ctest.log)" $((SECONDS - t)) FAIL
  else
    row ctest "$what" $((SECONDS - t)) PASS
  fi
fi

# --- 4. train, checkpoint, kill -9, resume -------------------------------------------------
# The tiny model of configs/tiny.yaml on the test fixtures' question/answer data: a reference
# run, then a run killed (SIGKILL) after its first checkpoint and restarted, which resumes from
# that checkpoint; its losses must equal the reference's (run.deterministic) or be within
# FTUNE_CHECK_TOL (GPU kernels with atomics are not bitwise reproducible without it).
train_check() {
  # checkpoint_lib: fail, losses, compare_losses, rank_pid, latest_of, step_of; cds to $OUT/train.
  export FTUNE_SOURCE_DIR=$SRC
  local mpirun=$MPIRUN  # checkpoint_lib.sh sets its own MPIRUN (an array)
  source "$SRC/tests/e2e/checkpoint_lib.sh" "$FTUNE" "$OUT/train"
  local sets=(--set tokenizer.path="$FIX/tokenizer" --set "data.inputs=[\"$FIX/qa.jsonl\"]"
    --set data.dir="$PWD/data" --set data.max_seq_len=128 --set train.steps="$STEPS"
    --set checkpoint.every="$EVERY" --set checkpoint.keep=2 --set log.progress=lines
    --set parallel.timeout_s=60)
  local exact=0 tol=${FTUNE_CHECK_TOL:-1e-3}
  if "$FTUNE" env --config "$SRC/configs/tiny.yaml" --set run.output_dir="$PWD/probe" \
    --set run.deterministic=true > probe.log 2>&1; then
    sets+=(--set run.deterministic=true)
    exact=1 tol=0
  fi
  local launch=("$FTUNE")
  # shellcheck disable=SC2206  # mpirun: words
  ((RANKS > 1)) && launch=($mpirun -np "$RANKS" "$FTUNE")
  "${launch[@]}" prepare --config "$SRC/configs/tiny.yaml" "${sets[@]}" \
    --set run.output_dir="$PWD/prep" > prepare.log 2>&1 || { cat prepare.log; fail "ftune prepare failed"; }
  train() {  # out log: exec, so that $! is the launcher's pid
    exec "${launch[@]}" train --config "$SRC/configs/tiny.yaml" "${sets[@]}" \
      --set run.output_dir="$PWD/$1" > "$2" 2>&1
  }
  # Reference, with the GPU memory ftune holds sampled meanwhile.
  local t0=$SECONDS
  (train ref ref.log) &
  local pid=$! mem=""
  while kill -0 "$pid" 2> /dev/null; do
    if [[ $DEVICE == cuda ]]; then
      nvidia-smi --query-compute-apps=used_memory --format=csv,noheader,nounits 2> /dev/null |
        grep -E '^[0-9]+$' >> gpu_mem.txt || true
    fi
    sleep 0.2
  done
  wait "$pid" || { tail -n 30 ref.log; fail "the reference run failed (log: train/ref.log)"; }
  local ref_s=$((SECONDS - t0))
  [[ -s gpu_mem.txt ]] && mem=$(sort -n gpu_mem.txt | tail -n 1)
  losses ref/metrics.jsonl > ref.losses
  [[ $(wc -l < ref.losses) == "$STEPS" ]] || fail "the reference run logged $(wc -l < ref.losses) steps of $STEPS"
  # Killed once its first checkpoint is on disk, then restarted.
  (train cut cut1.log) &
  pid=$!
  local deadline=$((SECONDS + 120))
  until [[ -f cut/checkpoints/latest ]] || ! kill -0 "$pid" 2> /dev/null; do
    ((SECONDS < deadline)) || fail "no checkpoint within 120 s (log: train/cut1.log)"
    sleep 0.02
  done
  local victim=$pid
  if ((RANKS > 1)); then victim=$(rank_pid "$pid" 0) || fail "no rank 0 under mpirun $pid"; fi
  kill -9 "$victim" 2> /dev/null || true
  wait "$pid" && fail "the killed run exited 0: it ended before the kill (raise FTUNE_CHECK_STEPS)" || true
  local ck at
  ck=$(latest_of cut/checkpoints)
  at=$(step_of "$ck")
  ((at < STEPS)) || fail "the run ended before the kill (latest $ck): nothing to resume"
  (train cut cut2.log) || { tail -n 30 cut2.log; fail "the resumed run failed (log: train/cut2.log)"; }
  grep -q "resumed from .*$ck: step $at" cut2.log || { tail -n 30 cut2.log; fail "did not resume from $ck"; }
  losses cut/metrics.jsonl > cut.losses
  local cmp
  cmp=$(compare_losses ref.losses cut.losses 1 "$tol") || { echo "$cmp"; fail "resumed losses differ: $cmp"; }
  local how="equal (run.deterministic)"
  ((exact)) || how="within $tol without run.deterministic: $cmp"
  echo "$RANKS rank(s) on $DEVICE, $STEPS steps in ${ref_s} s, killed after checkpoint step $at," \
    "resumed; losses $how${mem:+; GPU memory up to $mem MiB}" > result.txt
}
t=$SECONDS
if (($(left) < 30)); then
  row train "not started, $(left) s left" 0 "FAIL (deadline)"
elif export -f train_check && export SRC OUT RANKS STEPS EVERY DEVICE MPIRUN &&
  timeout "$(left)" bash -c train_check > "$OUT/train.log" 2>&1; then
  row train "$(cat "$OUT/train/result.txt")" $((SECONDS - t)) PASS
else
  tail -n 15 "$OUT/train.log"
  row train "tiny model, checkpoint, kill -9, resume on $DEVICE (log: train.log)" $((SECONDS - t)) FAIL
fi
exit "$FAILED"
