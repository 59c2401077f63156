#!/usr/bin/env bash
# GPU cluster under SLURM: one task per node driving all of its GPUs; jax.distributed reads the SLURM environment
# (--distributed). Install first on a shared filesystem: pip install -e '.[cuda]'.
#   sbatch -N NODES --gpus-per-node=8 launch/slurm_gpu.sh CONFIG[:presets] WORKDIR [overrides]
# WORKDIR must be on a filesystem every node sees. data.batch_size (global) must be a multiple of the number of
# GPUs. Preemption (scontrol requeue, time limit with --signal=TERM@120) sends SIGTERM: every task saves the
# current step and exits 0; the requeued job resumes from it.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --requeue
#SBATCH --signal=TERM@120
set -euo pipefail
config=$1; workdir=$2; shift 2
srun python -m uda_jax.main --distributed --config "$config" --workdir "$workdir" "$@"
