#!/usr/bin/env bash
# One machine, all its accelerators (or the CPU). GPUs: pip install -e '.[cuda]' first.
#   bash launch/single_host.sh CONFIG[:presets] WORKDIR [overrides]
# SIGTERM saves the current step and exits 0; the same command resumes.
set -euo pipefail
config=$1; workdir=$2; shift 2
exec python -m uda_jax.main --config "$config" --workdir "$workdir" "$@"
