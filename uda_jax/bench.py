"""Training-step benchmark: prints steady-state step time, images/s and XLA-counted FLOPs per step.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 5
  python -m uda_jax.bench --config configs/fada.py --size 720,1280 --target_size 512,1024 --steps 0

Runs the real jitted, data-parallel step of `config.method` on random inputs of the given sizes, so it needs no
dataset. Global batch: config.data.batch_size source + as many target images (--config.data.batch_size=1 for
1+1). --steps 0 compiles only and reports the XLA-counted FLOPs (sizes too large to run on this machine).

--compare_torch also times the official PyTorch iteration of the same network on the same inputs in this
process (uda_jax/bench_torch.py; needs the optional extra: pip install -e '.[torch]') and prints its median
step time and the ratio ours / torch:

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 3 --compare_torch
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from uda_jax import methods, parallel, steps, xla_flags
from uda_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:presets].", lock_config=True)
_SIZE = flags.DEFINE_string("size", "256,512", "H,W of the source (and, by default, target) images.")
_TARGET_SIZE = flags.DEFINE_string("target_size", "", "H,W of the target images if they differ.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
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


def benchmark(config, size, num_steps, target_size=None):
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  b = config.data.batch_size
  batch = random_batch(config, size, target_size)
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
          "size": f"{size[0]}x{size[1]}" + (f" + {target_size[0]}x{target_size[1]}" if target_size else ""),
          "batch": f"{b}+{b}" if images == 2 * b else f"{b}", "compile_s": compile_s,
          "gflops_per_step": flops / 1e9}
  if num_steps == 0:
    return info
  states, m = compiled(states, gb, jnp.int32(0))
  jax.block_until_ready(m)
  times = []
  for i in range(num_steps):
    t0 = time.perf_counter()
    states, m = compiled(states, gb, jnp.int32(i + 1))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  return {**info, "xla_flags": os.environ.get("XLA_FLAGS", ""), "step_s": step_s, "images_per_s": images / step_s,
          "achieved_gflops_per_s": flops / 1e9 / step_s}


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
  r = benchmark(config, size, _STEPS.value, target)
  if _COMPARE_TORCH.value:
    t = bench_torch.benchmark(config, random_batch(config, size, target), _STEPS.value)
    r = {**r, "torch": t["torch_version"], "torch_threads": t["torch_threads"], "torch_step_s": t["torch_step_s"],
         "ratio_ours_over_torch": r["step_s"] / t["torch_step_s"]}
  for k, v in r.items():
    print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
