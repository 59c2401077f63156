#!/usr/bin/env bash
# Multi-host Cloud TPU VM pod slice: installs and starts the same command on every worker; jax.distributed finds
# the other workers by itself (--distributed).
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG[:presets] WORKDIR [overrides]
# The repository must be checked out at $REPO_DIR (default: uda_jax) on every worker. WORKDIR and
# --config.data.data_dir must be paths every worker reaches (gs:// buckets). data.batch_size (global) must be a
# multiple of the number of TPU chips; each host reads only its own share. SIGTERM (maintenance events) makes
# every worker save the current step and exit 0: run the same command again to resume.
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
repo=${REPO_DIR:-uda_jax}
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $(printf %q "$repo") && pip install -q -e '.[tpu]' && \
   python -m uda_jax.main --distributed --config $(printf %q "$config") --workdir $(printf %q "$workdir")$overrides"
