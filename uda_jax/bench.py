"""Training-step benchmark: prints steady-state step time, images/s and XLA-counted FLOPs per step.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 5

Runs the real jitted, data-parallel step of `config.method` on random inputs of the given size (source and
target alike), so it needs no dataset. Global batch: config.data.batch_size source + as many target images.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from uda_jax import methods, parallel, steps

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:presets].", lock_config=True)
_SIZE = flags.DEFINE_string("size", "256,512", "H,W of source and target images.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")


def benchmark(config, size, num_steps):
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  b = config.data.batch_size
  rng = np.random.default_rng(0)
  batch = {"source_image": rng.normal(size=(b, *size, 3)).astype(np.float32),
           "source_label": rng.integers(0, config.model.num_classes, (b, *size)).astype(np.int32),
           "target_image": rng.normal(size=(b, *size, 3)).astype(np.float32)}
  states = steps.init_states(config, method, mesh, {k: v.shape for k, v in batch.items()}, pretrained=False)
  step_fn = steps.make_train_step(method, config, mesh)
  gb = parallel.global_batch(batch, mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(states, gb, jnp.int32(0)).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  states, m = compiled(states, gb, jnp.int32(0))
  jax.block_until_ready(m)
  times = []
  for i in range(num_steps):
    t0 = time.perf_counter()
    states, m = compiled(states, gb, jnp.int32(i + 1))
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  return {"devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "method": config.method,
          "size": f"{size[0]}x{size[1]}", "batch": f"{b}+{b}", "compile_s": compile_s, "step_s": step_s,
          "images_per_s": 2 * b / step_s, "gflops_per_step": flops / 1e9,
          "achieved_gflops_per_s": flops / 1e9 / step_s}


def main(argv):
  del argv
  size = tuple(int(s) for s in _SIZE.value.split(","))
  r = benchmark(_CONFIG.value, size, _STEPS.value)
  for k, v in r.items():
    print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
