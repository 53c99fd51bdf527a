#!/usr/bin/env bash
# slurm: cluster/slurm/ftune_gpu.sbatch on a real local Slurm cluster without GPUs
# (--gpus-per-node=0, 2 ranks on one node): it sources the env file (FTUNE_ENV, as
# cluster/gpu_build.sh writes one), runs the tiny finetune through job.sh to exit code 0:0, and
# every rank sees the NCCL settings of the submitting shell, which job.sh names to mpirun (-x).
# Without an env file the job ends at once with a message naming it.
# Usage: gpu_template_test.sh <ftune-binary> <scratch-dir>  (env FTUNE_SOURCE_DIR, FTUNE_MPIEXEC)
source "$(dirname "$0")/slurm_lib.sh" "$@"
need_mpirun
start_cluster
write_config

# The env file stands for build-gpu/env.sh: it points FTUNE at a wrapper that records, per rank,
# the NCCL variables the rank sees, then runs ftune.
cat > ftune_wrapper.sh << EOF
#!/bin/sh
env | grep '^NCCL_' | sort > "$SCRATCH/nccl_env.\${OMPI_COMM_WORLD_RANK:-x}"
exec "$FTUNE" "\$@"
EOF
chmod +x ftune_wrapper.sh
echo "export FTUNE=$SCRATCH/ftune_wrapper.sh" > gpu_env.sh

id=$(FTUNE_ENV=$SCRATCH/gpu_env.sh NCCL_SOCKET_IFNAME=lo NCCL_IB_HCA=mlx5_0:1 \
  submit ftune_gpu.sbatch -n 2 --ntasks-per-node=2 -o "$SCRATCH/gpu.log" -- base.yaml \
  --set run.output_dir="$SCRATCH/run_gpu" --set train.steps=4 --set checkpoint.every=2)
echo "submitted job $id (template ftune_gpu.sbatch, --gpus-per-node=0, -n 2)"
expect_completed "$id" 0 gpu.log
grep -q "job.sh: mpirun --bind-to none .*-x NCCL_IB_HCA .*ftune_wrapper.sh train" gpu.log ||
  { cat gpu.log; fail "job.sh did not name NCCL_IB_HCA to mpirun"; }
[[ -f run_gpu/checkpoints/latest && -d run_gpu/final ]] || { ls -R run_gpu; fail "run_gpu lacks a checkpoint or final/"; }
for r in 0 1; do
  [[ -f nccl_env.$r ]] || fail "rank $r did not run the env file's FTUNE (no nccl_env.$r)"
  grep -qx "NCCL_SOCKET_IFNAME=lo" "nccl_env.$r" && grep -qx "NCCL_IB_HCA=mlx5_0:1" "nccl_env.$r" ||
    { cat "nccl_env.$r"; fail "rank $r lacks NCCL_SOCKET_IFNAME or NCCL_IB_HCA"; }
done
echo "ok: both ranks ran the env file's ftune with NCCL_SOCKET_IFNAME and NCCL_IB_HCA"

id=$(FTUNE_ENV=$SCRATCH/missing_env.sh submit ftune_gpu.sbatch -n 1 --ntasks-per-node=1 -o "$SCRATCH/noenv.log" -- base.yaml)
state=$(wait_job "$id" 60)
[[ $state == FAILED ]] && grep -q "no env file $SCRATCH/missing_env.sh" noenv.log ||
  { cat noenv.log; fail "without its env file the job ended $state, not FAILED with a message"; }
echo "ok: without the env file the job failed at once, naming it"
echo PASS
