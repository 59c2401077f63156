#!/usr/bin/env bash
# A multi-process run on one machine, configured as on any cluster JAX does not detect by itself:
# JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID per process (CPU: 2 devices each, gloo).
#   bash launch/local_cluster.sh NUM_PROCESSES CONFIG[:presets] WORKDIR [overrides]
# SIGTERM to this script is passed to every process: all save the same step and exit 0.
set -euo pipefail
n=$1; config=$2; workdir=$3; shift 3
export JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-127.0.0.1:12355} JAX_NUM_PROCESSES=$n
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-2}"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_PROCESS_ID=$i python -m uda_jax.main --distributed --config "$config" --workdir "$workdir" "$@" &
  pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  rc=0; wait "$pid" || rc=$?
  while kill -0 "$pid" 2>/dev/null; do  # wait was cut short by the trapped signal: wait for the real exit
    rc=0; wait "$pid" || rc=$?
  done
  [ "$rc" = 0 ] || status=$rc
done
exit "$status"
