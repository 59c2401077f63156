#!/usr/bin/env bash
# GPU cluster under SLURM, one process per node (all of its GPUs):  sbatch -N NODES launch/slurm_gpu.sh CONFIG WORKDIR
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
config=$1; workdir=$2; shift 2
srun python -m uda_jax.main --distributed --config "$config" --workdir "$workdir" "$@"
