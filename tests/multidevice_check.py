"""Run in a subprocess with 4 fake CPU devices: the 4-device step equals the 1-device step.

Prints 'max_abs_diff <x>' per state for the test to read.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

import adaptsegnet
from step_utils import init, random_batch
from uda_jax import evaluate, parallel, steps


def run(devices, config, batch, num_steps=2):
  mesh = parallel.make_mesh(devices)
  method, mesh, states = init(config, batch, mesh)
  step = steps.make_train_step(method, config, mesh)
  metrics = None
  for i in range(num_steps):
    states, metrics = step(states, parallel.global_batch(batch, mesh), jnp.int32(i))
  return jax.device_get(states), jax.device_get(metrics)


def run_eval(devices, config, seg_state, batches):
  """Multi-scale + flip evaluation of `batches` on `devices`: (confusion matrix, predictions kept)."""
  mesh = parallel.make_mesh(devices)
  seg_state = jax.device_put(seg_state, parallel.replicated(mesh))
  return evaluate.run(seg_state, steps.make_eval_step(config, mesh), iter(batches), mesh, num_samples=6)


def main():
  assert jax.device_count() == 4, jax.devices()
  mode = sys.argv[1] if len(sys.argv) > 1 else "frozen"
  if mode == "jal_wtm":  # JAL + WTM's five states, the WTMs at a learning rate that moves them
    import jal_wtm  # pylint: disable=g-import-not-at-top
    c = jal_wtm.get_config("toy")
    c.optim.wtm_lr = 1.0
    mode = "frozen"
  elif mode == "pixel_weighted":  # four states; no dropout, whose masks depend on the device (rng per device)
    import pixel_weighted  # pylint: disable=g-import-not-at-top
    c = pixel_weighted.get_config("toy")
    c.model.head_dropout, c.loss.memreg_start = 0.0, 0
    # float64: in float32 the gradients of MRNet's GroupNorm biases are sums that cancel to ~1e-3 of their
    # terms, so 1 and 4 devices (different summation orders) differ by up to 9% there; in float64 by 1e-15.
    jax.config.update("jax_enable_x64", True)
    c.model.dtype = "float64"
    mode = "frozen"
  elif mode == "lsdseg":  # F, G and D (three Adam states); no dropout, whose masks depend on the device
    import lsdseg  # pylint: disable=g-import-not-at-top
    c = lsdseg.get_config("toy")
    c.model.fc_dim, c.gen.width, c.disc.width = 32, 8, 8
    c.model.fc_dropout = c.gen.dropout = c.disc.dropout = 0.0
    # float64: Adam's first update is ~lr x sign(gradient), so float32 summation-order noise on a near-zero
    # gradient could flip a whole lr-sized step between device counts.
    jax.config.update("jax_enable_x64", True)
    c.model.dtype = "float64"
    mode = "frozen"
  else:
    c = adaptsegnet.get_config("toy")
  c.model.width = 8
  c.disc.channels = (8, 8, 8, 8)
  c.model.bn_mode = mode
  c.optim.train_bn = c.model.bn_mode == "sync"  # FADA self-distillation: SyncBN with trained scale / shift
  batch = random_batch(batch=4)
  one, m1 = run(jax.devices()[:1], c, batch)
  four, m4 = run(jax.devices(), c, batch)
  for name in one:
    flat_one = jax.tree_util.tree_flatten_with_path(one[name])[0]
    flat_four = jax.tree.leaves(four[name])
    diffs = {jax.tree_util.keystr(p): np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
             for (p, a), b in zip(flat_one, flat_four)}
    worst = max(diffs, key=diffs.get)
    scale = max(np.max(np.abs(a)) for a in jax.tree.leaves(one[name].params))
    print(f"state {name} max_abs_diff {diffs[worst]:.3e} scale {scale:.3e} at {worst.replace(' ', '')}")
  for k in m1:
    print(f"metric {k} {float(m1[k]):.6f} {float(m4[k]):.6f}")
  if c.model.bn_mode != "frozen":  # BatchNorm statistics and (sync) affine parameters actually moved
    moved = lambda tree, init: max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                   for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(init)))
    _, _, fresh = init(c, batch, parallel.make_mesh(jax.devices()[:1]))
    fresh = jax.device_get(fresh["seg"])
    print(f"moved stats {moved(one['seg'].batch_stats, fresh.batch_stats):.3e} "
          f"bn_affine {moved(one['seg'].params['backbone']['bn1'], fresh.params['backbone']['bn1']):.3e}")
  if len(sys.argv) > 2 and sys.argv[2] == "no_eval":
    return

  # Evaluation: two batches of 4, the second padded (mask) to 3 examples; multi-scale + flip.
  c.eval.scales, c.eval.flip = (0.75, 1.0), True
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(4, 32, 64, 3)).astype(np.float32),
              "label": rng.integers(0, 20, (4, 48, 96)).astype(np.int32),
              "mask": np.array([True, True, True, mask_last])} for mask_last in (True, False)]
  cm1, s1 = run_eval(jax.devices()[:1], c, one["seg"], batches)
  cm4, s4 = run_eval(jax.devices(), c, one["seg"], batches)
  same_preds = all(np.array_equal(a[2], b[2]) for a, b in zip(s1, s4)) and len(s1) == len(s4) == 6
  print(f"eval cm_equal {np.array_equal(cm1, cm4)} preds_equal {same_preds} pixels {int(cm1.sum())}")


if __name__ == "__main__":
  main()
