#!/usr/bin/env bash
# The GPU benchmark figures of docs/performance.md: our jitted step against the official PyTorch iteration of the
# same network (cuDNN, benchmark mode as the official scripts set it), float32 and bfloat16, at the official sizes.
#
#   bash launch/bench_gpu.sh compare    # AdaptSegNet, ours vs PyTorch, float32 and bfloat16
#   bash launch/bench_gpu.sh fada       # FADA the same (2+2); the 1x1-as-conv ablation; the JAL + WTM step
#   bash launch/bench_gpu.sh memory     # FADA 4+4 with and without remat; the pixel-weighted step
#   bash launch/bench_gpu.sh last       # pixel-weighted; FADA 1+1 vs PyTorch; FADA 2+2 buffer assignment; remat
#   BUDGET=540 bash launch/bench_gpu.sh lease   # one short lease: FADA 2+2 fp32 vs PyTorch, pixel-weighted,
#                                       # FADA bf16 vs PyTorch, AdaptSegNet fp32 vs PyTorch, while time is left
#   BUDGET=540 bash launch/bench_gpu.sh profile # where the time goes, ours and PyTorch's kernels side by side:
#                                       # AdaptSegNet fp32, FADA 2+2 bf16 (--profile; traces in $PROFILES)
#
# Logs go to $OUT (or ./bench_logs). JAX does not preallocate, so that PyTorch, timed after it in the same
# process, finds the memory JAX's step did not use; each run has a time limit (LIMIT, seconds, default 400:
# compiling a ResNet-101 step at these sizes takes 50-115 s on an H100). BUDGET (seconds, optional) bounds the
# whole script: each run gets at most what is left of it, and a run is skipped once under 100 s are left.
set -u
t_end=$(( SECONDS + ${BUDGET:-100000} ))
out=${OUT:-bench_logs}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
read -r -a big <<< "${SIZES:---size 720,1280 --target_size 512,1024}"  # SIZES: other sizes, for a smoke test

run() {  # name, bench flags...
  local name=$1; shift
  local left=$(( t_end - SECONDS )) limit=${LIMIT:-400}
  if (( left < 100 )); then echo "== $name: skipped (${left} s of BUDGET left)"; return; fi
  (( left < limit )) && limit=$left
  echo "== $name (limit ${limit} s): python3 -m uda_jax.bench $*"
  timeout "$limit" python3 -m uda_jax.bench "$@" > "$out/$name.log" 2>&1
  echo "   exit $?"
  grep -E '^ *[a-z_0-9]+: ' "$out/$name.log" || tail -n 15 "$out/$name.log"
}

case "${1:-compare}" in
  compare)
    run asn_f32 --config configs/adaptsegnet.py "${big[@]}" --steps 10 --compare_torch
    run asn_bf16 --config configs/adaptsegnet.py "${big[@]}" --steps 10 --compare_torch --config.model.dtype=bfloat16
    ;;
  fada)
    run fada_f32 --config configs/fada.py:adv "${big[@]}" --steps 5 --compare_torch --config.data.batch_size=2
    run fada_bf16 --config configs/fada.py:adv "${big[@]}" --steps 5 --compare_torch --config.data.batch_size=2 \
      --config.model.dtype=bfloat16
    UDA_JAX_CONV1X1_MATMUL=0 run asn_f32_conv1x1 --config configs/adaptsegnet.py "${big[@]}" --steps 10
    run jal_wtm_f32 --config configs/jal_wtm.py "${big[@]}" --steps 10
    ;;
  memory)
    run fada44_f32 --config configs/fada.py:adv "${big[@]}" --steps 3
    run fada44_f32_remat --config configs/fada.py:adv "${big[@]}" --steps 3 --config.train.remat=True
    run pixel_f32 --config configs/pixel_weighted.py "${big[@]}" --steps 10
    ;;
  last)
    run pixel_f32 --config configs/pixel_weighted.py "${big[@]}" --steps 10
    run fada11_f32 --config configs/fada.py:adv "${big[@]}" --steps 5 --compare_torch --config.data.batch_size=1
    XLA_FLAGS=--xla_dump_to=/tmp/xla_dump run fada22_compile --config configs/fada.py:adv "${big[@]}" --steps 0 \
      --config.data.batch_size=2
    # shellcheck disable=SC2012
    f=$(ls -S /tmp/xla_dump/*buffer-assignment.txt 2>/dev/null | head -n 1)
    [ -n "$f" ] && gzip -c "$f" > "$out/fada22_buffer_assignment.txt.gz"
    run asn_f32_remat --config configs/adaptsegnet.py "${big[@]}" --steps 10 --config.train.remat=True
    ;;
  lease)
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -m pip list 2>/dev/null | grep -E '^(jax|jaxlib|jax-cuda[0-9]+-plugin|flax|optax|torch) '
    } > "$out/machine.txt" 2>&1
    LIMIT=${LIMIT:-230} run fada_f32 --config configs/fada.py:adv "${big[@]}" --steps 5 --compare_torch \
      --config.data.batch_size=2
    run pixel_f32 --config configs/pixel_weighted.py "${big[@]}" --steps 10
    LIMIT=${LIMIT:-230} run fada_bf16 --config configs/fada.py:adv "${big[@]}" --steps 5 --compare_torch \
      --config.data.batch_size=2 --config.model.dtype=bfloat16
    run asn_f32 --config configs/adaptsegnet.py "${big[@]}" --steps 10 --compare_torch
    ;;
  profile)  # the tables go to the logs; the traces (tens of MB) to $PROFILES, outside $out
    p=${PROFILES:-/tmp/uda_jax_profiles}
    run asn_f32_profile --config configs/adaptsegnet.py "${big[@]}" --steps 5 --compare_torch \
      --profile "$p/asn_f32" --profile_steps 3
    LIMIT=${LIMIT:-230} run fada_bf16_profile --config configs/fada.py:adv "${big[@]}" --steps 3 --compare_torch \
      --config.data.batch_size=2 --config.model.dtype=bfloat16 --profile "$p/fada_bf16" --profile_steps 2
    for f in "$out/asn_f32_profile.log" "$out/fada_bf16_profile.log"; do  # both tables, whole
      if [ -f "$f" ]; then sed -n '/^profile: /,$p' "$f"; fi
    done
    ;;
  *) echo "unknown part '$1' (compare | fada | memory | last | lease | profile)" >&2; exit 2 ;;
esac
