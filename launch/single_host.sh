#!/usr/bin/env bash
# One machine, all its accelerators (or the CPU):  bash launch/single_host.sh CONFIG[:presets] WORKDIR [overrides]
set -euo pipefail
config=$1; workdir=$2; shift 2
exec python -m uda_jax.main --config "$config" --workdir "$workdir" "$@"
