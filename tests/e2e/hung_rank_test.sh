#!/usr/bin/env bash
# e2e: a rank that stops (SIGSTOP) without dying is named. mpirun sees nothing wrong with a stopped
# process, so the ranks waiting for it time out after parallel.timeout_s; the report must name the
# collective (op, sequence number, communicator), the stopped rank as not responding, and no
# other rank as missing; one rank prints it in full; the job ends by itself; the stopped rank
# does not blame the others when mpirun continues it to kill it.
# Usage: hung_rank_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/checkpoint_lib.sh" "$@"
need_mpirun
# grep -a throughout: mpirun's merged output of a killed job can hold stray bytes (CI once saw
# "binary file matches" instead of the report lines, and an empty report.txt).
write_config
TIMEOUT=5
NP=4
STOP=2

( exec "${MPIRUN[@]}" -np $NP "$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/run" \
  --set train.steps=100000 --set checkpoint.every=0 --set parallel.timeout_s=$TIMEOUT > hung.log 2>&1 ) &
mpid=$!
wait_for_step run/metrics.jsonl 3 300
stopped=$(rank_pid $mpid $STOP) || fail "no pid for rank $STOP"
# (|| true: set -e holds inside the trap, and the rank is usually reaped by now)
cleanup() { kill -CONT "$stopped" 2> /dev/null || true; kill -9 "$stopped" $mpid 2> /dev/null || true; }
trap cleanup EXIT
kill -STOP "$stopped"
start=$SECONDS
while alive $mpid; do
  ((SECONDS - start < 90)) || { cat hung.log; fail "job still running 90 s after rank $STOP stopped"; }
  sleep 0.2
done
elapsed=$((SECONDS - start))
rc=0
wait $mpid || rc=$?
sleep 1
! alive "$stopped" || fail "the stopped rank (pid $stopped) outlived the job"
echo "--- the report (job ended ${elapsed} s after SIGSTOP, rc $rc) ---"
sed -n '/did not complete within/,$p' hung.log | head -60
echo "---"
((rc != 0)) || fail "mpirun exited 0"
((elapsed <= TIMEOUT + 30)) || fail "the job took ${elapsed} s to end (timeout ${TIMEOUT} s)"

# The hung collective, with its sequence number and communicator.
grep -aEq "error: (AllReduce|ReduceScatter|AllGather|Broadcast|Barrier) #[0-9]+ on communicator '[^']+' \(ranks [0-9,-]+.*did not complete within parallel.timeout_s = $TIMEOUT s" hung.log ||
  { cat hung.log; fail "no line names the timed-out collective (op #seq on communicator)"; }
# Exactly one full report, and in it exactly the stopped rank as missing.
n=$(grep -ac "Not arrived or not responding:" hung.log || true)
[[ $n == 1 ]] || { cat hung.log; fail "$n full reports (want 1)"; }
reporter=$(grep -a -m1 "Not arrived or not responding:" hung.log | sed 's/^\[rank \([0-9]*\)\].*/\1/')
grep -a "^\[rank $reporter\] " hung.log > report.txt  # (other ranks' lines may come in between)
absent=$(awk '/Not arrived or not responding:/ {on = 1; next}
              on && /^\[rank [0-9]+\]   rank [0-9]+ \(/ {print $4; next}
              {on = 0}' report.txt)
[[ $absent == "$STOP" ]] || { cat hung.log; fail "ranks named as not arrived: '$absent' (want $STOP)"; }
grep -aEq "^\[rank [0-9]+\]   rank $STOP \([^)]*pid $stopped\): no heartbeat for [0-9.]+ s \(stopped, dead or exited\)" hung.log ||
  { cat hung.log; fail "rank $STOP (pid $stopped) is not named as not responding"; }
grep -aEq "^\[rank [0-9]+\]   rank $STOP: no heartbeat for" hung.log ||
  { cat hung.log; fail "the table of last collectives lacks rank $STOP"; }
# The stopped rank, continued by mpirun to be killed, does not report a timeout of its own (its
# deadline does not count the time it was stopped).
! grep -aq "^\[rank $STOP\] error: .*did not complete within" hung.log ||
  { cat hung.log; fail "the stopped rank reported a timeout"; }
# The report is in the reporting rank's log, and every rank published a flight record.
grep -alq "no heartbeat for" run/logs/rank_*.log || fail "the report is not in any rank's log"
for r in $(seq 0 $((NP - 1))); do
  [[ -s run/logs/flight/rank_$r.json ]] || fail "no flight record run/logs/flight/rank_$r.json"
done
echo "ok: rank $STOP stopped; the job ended ${elapsed} s later, naming it"
echo PASS
