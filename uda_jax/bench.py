"""Training-step benchmark: step time, images/s, XLA-counted FLOPs, MFU, peak device memory and input wait.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 720,1280 --target_size 512,1024   # e.g. an H100
  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 3 --measure_peak  # a CPU
  python -m uda_jax.bench --config configs/adaptsegnet.py:toy --input=pipeline --steps 5
  python -m uda_jax.bench --config configs/fada.py --size 720,1280 --target_size 512,1024 --steps 0

MFU = XLA's FLOPs of the compiled step / step time / (peak per device x devices). The peak comes from
uda_jax/peak_flops.py (V100 ... H200, TPU v4 ... v6e; the precision model.dtype runs at, --precision to pick
another), from --peak_tflops, or, on a CPU, from --measure_peak (a float32 matmul). Peak memory is the device's
peak_bytes_in_use where the runtime reports it (GPU, TPU), else XLA's memory analysis of the step. input_s is
the host time to produce and transfer one batch; input_wait_s the time per step the device sat waiting for it
when batches are fed as the train loop feeds them (random arrays, or --input=pipeline: the config's real
tf.data input, whose shapes replace --size).

Runs the real jitted, data-parallel step of `config.method` on random inputs of the given sizes, so it needs no
dataset. Global batch: config.data.batch_size source + as many target images (--config.data.batch_size=1 for
1+1). --steps 0 compiles only and reports the XLA-counted FLOPs (sizes too large to run on this machine).

--compare_torch also times the official PyTorch iteration of the same network on the same inputs in this
process (uda_jax/bench_torch.py; needs the optional extra: pip install -e '.[torch]') and prints its median
step time and the ratio ours / torch:

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 3 --compare_torch
"""

import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from uda_jax import methods, parallel, peak_flops, steps, xla_flags
from uda_jax.data import pipeline
from uda_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:presets].", lock_config=True)
_SIZE = flags.DEFINE_string("size", "256,512", "H,W of the source (and, by default, target) images.")
_TARGET_SIZE = flags.DEFINE_string("target_size", "", "H,W of the target images if they differ.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
_INPUT = flags.DEFINE_enum("input", "random", ["random", "pipeline"],
                           "random: seeded random arrays of --size; pipeline: the config's real training input "
                           "(tf.data, decoding, augmentation; shapes from the data, --size ignored).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU (overrides the table).")
_MEASURE_PEAK = flags.DEFINE_bool("measure_peak", False, "Measure the peak with a large float32 matmul (CPUs).")
_PRECISION = flags.DEFINE_enum("precision", None, list(peak_flops.PRECISIONS),
                               "Which peak of the table to use; default: what model.dtype runs at on the device.")
_COMPARE_TORCH = flags.DEFINE_bool(
    "compare_torch", False, "Also time the official PyTorch iteration of the same network on the same inputs "
    "(needs: pip install -e '.[torch]') and print the ratio of the step times.")


def random_batch(config, size, target_size=None):
  """The benchmark's inputs: config.data.batch_size random source images with labels (about 5% ignored, 255)
  and as many target images, NHWC; seeded, so every call returns the same batch."""
  b = config.data.batch_size
  rng = np.random.default_rng(0)
  label = rng.integers(0, config.model.num_classes, (b, *size)).astype(np.int32)
  label[rng.random((b, *size)) < 0.05] = 255
  return {"source_image": rng.normal(size=(b, *size, 3)).astype(np.float32), "source_label": label,
          "target_image": rng.normal(size=(b, *(target_size or size), 3)).astype(np.float32)}


def benchmark(config, size, num_steps, target_size=None, input_mode="random", peak=None):
  """Compiles and times the step; returns the printed fields. `peak`: TFLOP/s per device (None: unknown)."""
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  b = config.data.batch_size
  if input_mode == "pipeline":
    local = pipeline.train_iterator(config.data, seed=config.seed, start_step=0,
                                    process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(local)
    size, target_size = batch["source_image"].shape[1:3], batch["target_image"].shape[1:3]
    target_size = None if target_size == size else target_size
  else:
    batch = random_batch(config, size, target_size)
    local = itertools.repeat(batch)
  states = steps.init_states(config, method, mesh, {k: v.shape for k, v in batch.items()}, pretrained=False)
  images = b if config.method == "source_only" else 2 * b  # source only never reads the target images
  step_fn = steps.make_train_step(method, config, mesh)
  gb = parallel.global_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(states, gb, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  info = {"devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "method": config.method,
          "dtype": config.model.dtype,
          "size": f"{size[0]}x{size[1]}" + (f" + {target_size[0]}x{target_size[1]}" if target_size else ""),
          "batch": f"{b}+{b}" if images == 2 * b else f"{b}", "input": input_mode, "compile_s": compile_s,
          "gflops_per_step": flops / 1e9, **_memory(compiled)}
  if num_steps == 0:
    return {**info, "mfu": "n/a (--steps 0 compiles only)"}
  states, m = compiled(states, gb, jnp.int32(0))
  jax.block_until_ready(m)
  times = []
  for i in range(num_steps):  # compute alone: the same device-resident batch, each step waited for
    t0 = time.perf_counter()
    states, m = compiled(states, gb, jnp.int32(i + 1))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  # As the train loop runs: the next batch is read and transferred while the device works on the previous step,
  # so the step waits for input only when the host is slower than the device.
  input_times = []
  t_loop = time.perf_counter()
  for i in range(num_steps):
    t0 = time.perf_counter()
    gb = parallel.global_batch(next(local), mesh)
    input_times.append(time.perf_counter() - t0)
    states, m = compiled(states, gb, jnp.int32(num_steps + i + 1))
  jax.block_until_ready(m)
  loop_s = (time.perf_counter() - t_loop) / num_steps
  achieved = flops / step_s
  info.update({"xla_flags": os.environ.get("XLA_FLAGS", ""), "step_s": step_s, "images_per_s": images / step_s,
               "achieved_tflops_per_s": achieved / 1e12, "input_s": float(np.median(input_times)),
               "input_wait_s": max(0.0, loop_s - step_s), "input_wait_fraction": max(0.0, loop_s - step_s) / loop_s})
  if memory_stats := jax.devices()[0].memory_stats():
    info["peak_device_memory_gib"] = memory_stats.get("peak_bytes_in_use", float("nan")) / 2**30
    info["peak_memory_source"] = "device memory_stats (peak_bytes_in_use)"
  if peak:
    info["peak_tflops_per_device"] = peak
    info["mfu"] = achieved / (peak * 1e12 * jax.device_count())
  else:
    info["mfu"] = "n/a (pass --peak_tflops or --measure_peak)"
  return info


def _memory(compiled) -> dict:
  """XLA's memory analysis of the compiled step (per device): what it needs besides the runtime's own."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if m is None:
    return {}
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {"peak_device_memory_gib": total / 2**30,
          "peak_memory_source": "XLA memory_analysis (arguments + outputs + temporaries - donated)"}


def measure_peak_tflops(n: int = 2048, repeats: int = 5) -> float:
  """Best float32 matmul throughput of one device, in TFLOP/s (a CPU's practical peak)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = min(_timed(f, x) for _ in range(repeats))
  return 2 * n**3 / best / 1e12


def _timed(f, x):
  t0 = time.perf_counter()
  f(x).block_until_ready()
  return time.perf_counter() - t0


def resolve_peak(config, given=None, measure=False, precision=None):
  """(TFLOP/s per device or None, how it was obtained)."""
  if given:
    return given, "--peak_tflops"
  if measure:
    return measure_peak_tflops(), "measured (float32 matmul)"
  kind = jax.devices()[0].device_kind
  precision = precision or peak_flops.default_precision(config.model.dtype, kind)
  found = peak_flops.peak_tflops(kind, precision)
  return found, (f"table: {peak_flops.lookup(kind)[0]} {precision}" if found else f"unknown for {kind!r}")


def main(argv):
  del argv
  xla_flags.apply(xla_flags.ENABLED.value)  # before the first device is touched
  size = tuple(int(s) for s in _SIZE.value.split(","))
  target = tuple(int(s) for s in _TARGET_SIZE.value.split(",")) if _TARGET_SIZE.value else None
  config = _CONFIG.value
  if _COMPARE_TORCH.value:  # fail before the long part: a missing torch or an unsupported config
    from uda_jax import bench_torch  # pylint: disable=g-import-not-at-top
    try:
      bench_torch.check(config, _STEPS.value)
    except UserError as e:
      sys.exit(f"error: {e}")
  peak, source = resolve_peak(config, _PEAK_TFLOPS.value, _MEASURE_PEAK.value, _PRECISION.value)
  r = benchmark(config, size, _STEPS.value, target, _INPUT.value, peak)
  r["peak_source"] = source
  if _COMPARE_TORCH.value:
    t = bench_torch.benchmark(config, random_batch(config, size, target), _STEPS.value)
    r = {**r, "torch": t["torch_version"], "torch_threads": t["torch_threads"], "torch_step_s": t["torch_step_s"],
         "ratio_ours_over_torch": r["step_s"] / t["torch_step_s"]}
  for k, v in r.items():
    print(f"{k:>22}: {v:.6g}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
