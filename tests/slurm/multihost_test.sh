#!/usr/bin/env bash
# slurm: two "hosts" on one machine (network namespaces fth1, fth2 joined by veth pairs to a
# bridge; one slurmd each, see cluster/local_slurm.sh --hosts) and jobs spanning both, so MPI
# traffic crosses a real network interface:
#   - `ftune env` under mpirun and srun --mpi=pmix: one rank per host, local rank 0/1 on each;
#   - the tiny finetune with dp=2 (mpirun) and with tp=2 (srun --mpi=pmix) through
#     cluster/slurm/ftune_multinode.sbatch: the losses equal a one-rank run's within 1e-5
#     (relative), and megabytes crossed fth2's veth while they ran.
# Usage: multihost_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/slurm_lib.sh" "$@"
need_mpirun
start_cluster --hosts 2
write_config
NET=${FTUNE_NETNS_PREFIX:-10.253.17}.0/24
MCA=(--mca btl self,vader,tcp --mca btl_tcp_if_include "$NET" --mca oob_tcp_if_include "$NET")

env_job() {  # name launcher-command...
  local name=$1 id r
  shift
  id=$(sbatch --parsable -N 2 -n 2 --chdir="$SCRATCH" -o "$SCRATCH/$name.log" --wrap "$* $FTUNE env") \
    || fail "sbatch --wrap '$*' failed"
  [[ $(wait_job "$id" 90) == COMPLETED ]] || { cat "$name.log"; fail "$name: job $id did not complete"; }
  for r in 1 2; do
    grep -q "rank $((r - 1))/2 | local rank 0/1 | host fth$r |" "$name.log" \
      || { cat "$name.log"; fail "$name: no line 'rank $((r - 1))/2 | local rank 0/1 | host fth$r'"; }
  done
  echo "ok: ftune env under $name: rank 0 on fth1, rank 1 on fth2, local rank 0/1 on each"
}
env_job mpirun mpirun --bind-to none "${MCA[*]}"
env_job srun env OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include="$NET" srun --mpi=pmix

STEPS=10
COMMON=(--set train.steps="$STEPS" --set checkpoint.every=0)
"$FTUNE" train --config base.yaml --set run.output_dir="$SCRATCH/ref" --set run.threads=1 \
  --set train.micro_batch=4 "${COMMON[@]}" > ref.log 2>&1 || { cat ref.log; fail "the one-rank run failed"; }
losses ref/metrics.jsonl > ref.losses

veth_bytes() { echo $(($(cat /sys/class/net/vfth2/statistics/rx_bytes) + $(cat /sys/class/net/vfth2/statistics/tx_bytes))); }
layout() {  # name launcher overrides...
  local name=$1 launcher=$2 id before after
  shift 2
  before=$(veth_bytes)
  id=$(FTUNE_LAUNCHER=$launcher FTUNE_IFNAME=$NET submit ftune_multinode.sbatch -N 2 -n 2 \
    --ntasks-per-node=1 -o "$SCRATCH/$name.log" -- base.yaml --set run.output_dir="$SCRATCH/$name" \
    "${COMMON[@]}" "$@")
  echo "submitted job $id ($name: ftune_multinode.sbatch -N 2 -n 2, FTUNE_LAUNCHER=$launcher)"
  expect_completed "$id" 0 "$name.log"
  [[ $(job_field "$id" NodeList) == "fth[1-2]" ]] || fail "job $id ran on $(job_field "$id" NodeList), not fth[1-2]"
  after=$(veth_bytes)
  (((after - before) > 1000000)) || fail "only $((after - before)) bytes crossed vfth2 during $name"
  echo "ok: $name spanned fth1 and fth2; $(((after - before) / 1000)) kB crossed vfth2"
  losses "$name/metrics.jsonl" > "$name.losses"
  compare_losses ref.losses "$name.losses" 1 1e-5 || fail "$name across two hosts differs from one rank"
}
layout dp2 mpirun --set parallel.dp=2 --set train.micro_batch=2
layout tp2 srun --set parallel.dp=1 --set parallel.tp=2 --set train.micro_batch=4
echo PASS
