#!/usr/bin/env bash
# The body of ftune's sbatch templates (ftune_1node.sbatch, ftune_multinode.sbatch): sets up the
# environment, launches `ftune train` with mpirun or srun --mpi=pmix, forwards Slurm's early
# warning signal to it and requeues the job when ftune stopped for preemption.
#   job.sh CONFIG [--set key=value ...]      (inside an allocation; the templates call it)
# Environment (all optional; sbatch passes the submitting shell's environment):
#   FTUNE           the ftune binary           (default: $SLURM_SUBMIT_DIR/build/ftune)
#   FTUNE_LAUNCHER  mpirun | srun              (default: mpirun)
#   FTUNE_PREPARE   1: run `ftune prepare` first (first attempt only, not after a requeue)
#   FTUNE_IFNAME    network interface(s) or CIDR for MPI/NCCL traffic between nodes (eth0,
#                   10.1.0.0/16); unset: the libraries choose
#   FTUNE_MPIRUN_ARGS / FTUNE_SRUN_ARGS   extra launcher arguments (word-split)
#
# Preemption: Slurm sends SIGUSR1 120 s before the time limit (--signal=B:USR1@120) or when asked
# (`scancel --batch --signal=USR1 JOB`, or --full). This script forwards it to the launcher,
# which forwards it to every rank (mpirun and srun both do); ftune finishes the step, saves a
# checkpoint and exits 75. Exit 75 here means "requeue me": the job requeues itself with
# `scontrol requeue` and, when it runs again, `ftune train` resumes from the last checkpoint in
# the same run directory. Any other exit status ends the job with that status.
set -uo pipefail
[[ $# -ge 1 ]] || { echo "job.sh: usage: job.sh CONFIG [--set key=value ...]" >&2; exit 2; }
CONFIG=$1
shift
FTUNE=${FTUNE:-${SLURM_SUBMIT_DIR:-$PWD}/build/ftune}
LAUNCHER=${FTUNE_LAUNCHER:-mpirun}
PREEMPTED=75
[[ -x $FTUNE ]] || { echo "job.sh: ftune binary '$FTUNE' not found; set FTUNE=/path/to/ftune" >&2; exit 2; }
[[ -f $CONFIG ]] || { echo "job.sh: config '$CONFIG' not found (relative paths are from $PWD)" >&2; exit 2; }

# Threads: one rank per GPU (or per task on CPU) with --cpus-per-task cores each.
THREADS=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# NCCL (GPU builds): warnings in the job log; fail fast instead of hanging on a lost peer.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
if [[ -n ${FTUNE_IFNAME:-} ]]; then
  [[ $FTUNE_IFNAME == */* ]] || export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$FTUNE_IFNAME}
  export OMPI_MCA_btl_tcp_if_include=$FTUNE_IFNAME OMPI_MCA_oob_tcp_if_include=$FTUNE_IFNAME
fi
# Open MPI: shared memory within a node, TCP between nodes (a cluster's own settings win).
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader,tcp}
if [[ $(id -u) == 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# mpirun reads the allocation (nodes, SLURM_NTASKS) itself and starts its daemons with srun;
# srun starts one task per rank, and PMIx gives ftune its rank, size and node-local peers.
# The site's NCCL settings (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) are named to mpirun (-x), so
# that every rank has them also where its daemons do not inherit this environment; srun passes
# the whole environment to every task.
nccl_vars=()
for v in $(compgen -e | grep -E '^(TORCH_)?NCCL_' || true); do nccl_vars+=(-x "$v"); done
# shellcheck disable=SC2206
case $LAUNCHER in
  mpirun) LAUNCH=(mpirun --bind-to none "${nccl_vars[@]}" ${FTUNE_MPIRUN_ARGS:-}) ;;
  srun) LAUNCH=(srun --mpi=pmix --kill-on-bad-exit=1 ${FTUNE_SRUN_ARGS:-}) ;;
  *) echo "job.sh: FTUNE_LAUNCHER must be mpirun or srun, not '$LAUNCHER'" >&2; exit 2 ;;
esac

restarts=${SLURM_RESTART_COUNT:-0}
echo "job.sh: job ${SLURM_JOB_ID:-?} attempt $((restarts + 1)) on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
  "${SLURM_NTASKS:-1} ranks, $THREADS threads each, launcher $LAUNCHER"

if [[ ${FTUNE_PREPARE:-0} == 1 && $restarts == 0 ]]; then
  "${LAUNCH[@]}" "$FTUNE" prepare --config "$CONFIG" "$@" || exit $?
fi

# Runs the launcher in the background so that a trapped signal interrupts `wait` at once. Both
# signals reach the launcher as SIGUSR1: mpirun answers SIGTERM by killing the ranks within a
# second, too soon for a checkpoint, and forwards SIGUSR1 to them untouched.
child=0
forward() {
  echo "job.sh: received SIG$1; sending SIGUSR1 to the ranks (ftune checkpoints, exits $PREEMPTED)"
  ((child)) && kill -USR1 "$child" 2> /dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
echo "job.sh: ${LAUNCH[*]} $FTUNE train --config $CONFIG --set run.threads=$THREADS $*"
"${LAUNCH[@]}" "$FTUNE" train --config "$CONFIG" --set run.threads="$THREADS" "$@" &
child=$!
while true; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2> /dev/null || break  # alive (or not yet reaped): a signal interrupted wait
done

if [[ $rc == "$PREEMPTED" && -n ${SLURM_JOB_ID:-} ]]; then
  echo "job.sh: ftune saved a checkpoint and exited $PREEMPTED; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "job.sh: 'scontrol requeue' failed; resubmit this job to resume" >&2
fi
echo "job.sh: ftune exited with status $rc"
exit "$rc"
