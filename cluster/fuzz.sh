#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang (+ ASan/UBSan) and fuzzes them one at
# a time, then merges what each run found into its committed corpus (tests/fuzz/corpus/<name>/,
# minimised with -merge=1). Inputs that crash, leak, time out (> 1 s) or exhaust memory are left
# in $WORK/artifacts/<name>/; once fixed, commit them to tests/fuzz/crashers/<name>/ (replayed by
# the unit test fuzz_replay, like the corpus).
#
#   cluster/fuzz.sh                      # every harness, 600 s each
#   cluster/fuzz.sh 60 tokenizer config  # 60 s, these harnesses
#   FUZZ_BUILD_DIR=build-fuzz WORK=/tmp/ftune-fuzz JOBS=2 NICE=19 MERGE=0 BUILD=0 CORPUS_MAX=40 \
#     cluster/fuzz.sh ...
#
# Needs clang and libclang-rt-dev (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}
WORK=${WORK:-/tmp/ftune-fuzz}
NICE=${NICE:-19}
ROOT=$PWD

# BUILD=0: the fuzz binaries are already built (by another process); use them as they are.
if [ "${BUILD:-1}" = 1 ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
    -DFTUNE_FUZZ=ON >/dev/null
fi

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in tests/fuzz/*_fuzz.cpp; do names+=("$(basename "$f" _fuzz.cpp)"); done
fi
if [ "${BUILD:-1}" = 1 ]; then
  nice -n "$NICE" cmake --build "$BUILD_DIR" -j"${JOBS:-$(nproc)}" --target "${names[@]/#/fuzz_}"
fi
mkdir -p "$WORK"
python3 tests/fuzz/make_seeds.py "$ROOT" "$WORK/seeds"
# Third-party leaks only (see the file); UBSan reports stop the run like ASan's.
export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitize/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1

printf '%-18s %6s %10s %8s %6s %6s %9s %7s %9s %s\n' harness time_s execs exec/s cov ft slowest_s rss_mb artifacts \
  corpus
for name in "${names[@]}"; do
  corpus=$WORK/corpus/$name artifacts=$WORK/artifacts/$name log=$WORK/$name.log
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz/corpus/"$name"/* "$WORK/seeds/$name"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [ -f tests/fuzz/dicts/"$name".dict ] && dict=(-dict=tests/fuzz/dicts/"$name".dict)
  start=$(date +%s)
  # -timeout=1: an input taking over 1 s is a finding; -rss_limit_mb also caps single mallocs.
  # timeout: a fuzzer stuck in its own crash handling (seen once) does not stall the rest.
  timeout -k 10 $((SECONDS_EACH + 300)) nice -n "$NICE" "$BUILD_DIR/tests/fuzz/fuzz_$name" "$corpus" "${dict[@]}" \
    -max_total_time="$SECONDS_EACH" -timeout=1 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || true
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  ft=$(sed -n 's/.* ft: \([0-9]*\) .*/\1/p' "$log" | tail -1)
  slowest=$(sed -n 's/^stat::slowest_unit_time_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  # Crashes, leaks, timeouts and out-of-memory inputs all leave an artifact (crash-, leak-,
  # timeout-, oom-, slow-unit-).
  n_artifacts=$(find "$artifacts" -type f | wc -l)
  if [ "${MERGE:-1}" = 1 ]; then
    merged=$WORK/merged/$name
    rm -rf "$merged" && mkdir -p "$merged"
    # $corpus holds the committed corpus too. The merge records each input's coverage edges (not
    # hit counts: -use_counters=0) in the control file; select_corpus.py keeps the CORPUS_MAX
    # inputs (default 40) that cover the most edges, so that the committed corpus stays small
    # (a plain -merge=1 kept ~500 inputs of one harness after 4 minutes, 157 by edges alone).
    ctl=$WORK/$name.merge_control
    rm -f "$ctl"
    if nice -n "$NICE" "$BUILD_DIR/tests/fuzz/fuzz_$name" -merge=1 -use_counters=0 -timeout=1 \
        -rss_limit_mb=4096 -merge_control_file="$ctl" "$merged" "$corpus" \
        >"$WORK/$name.merge.log" 2>&1; then
      rm -rf tests/fuzz/corpus/"$name" && mkdir -p tests/fuzz/corpus/"$name"
      python3 tests/fuzz/select_corpus.py "$ctl" "${CORPUS_MAX:-40}" | while read -r f; do
        cp "$f" tests/fuzz/corpus/"$name"/
      done
    else
      echo "fuzz: merging $name failed (see $WORK/$name.merge.log); corpus left as it was"
    fi
  fi
  printf '%-18s %6s %10s %8s %6s %6s %9s %7s %9s %s\n' "$name" "$elapsed" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "${ft:-?}" "${slowest:-?}" "${rss:-?}" "$n_artifacts" \
    "$(find tests/fuzz/corpus/"$name" -type f | wc -l)"
done
echo "fuzz: logs and artifacts in $WORK; corpora in tests/fuzz/corpus/"
