#!/usr/bin/env bash
# Multi-host TPU pod slice: the same command on every worker; jax.distributed finds the others by itself.
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG[:presets] WORKDIR [overrides]
# WORKDIR and --config.data.data_dir must be paths every worker can reach (e.g. gs:// buckets). The global
# batch (data.batch_size) must be a multiple of the number of TPU chips; each host reads only its own slice.
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
repo=${REPO_DIR:-uda_jax}
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && pip install -q -e . 'jax[tpu]==0.10.2' && \
   python -m uda_jax.main --distributed --config $config --workdir $workdir $*"
