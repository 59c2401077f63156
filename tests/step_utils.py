"""Random batches and states for step-level tests."""

import numpy as np

from uda_jax import methods, parallel, steps


def random_batch(batch=2, h=32, w=64, classes=19, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, (batch, h, w)).astype(np.int32)
  labels[:, :4] = 255
  return {"source_image": rng.normal(size=(batch, h, w, 3)).astype(np.float32), "source_label": labels,
          "target_image": rng.normal(size=(batch, h, w, 3)).astype(np.float32)}


def init(config, batch, mesh=None):
  mesh = mesh or parallel.make_mesh()
  method = methods.get(config.method)
  return method, mesh, steps.init_states(config, method, mesh, {k: v.shape for k, v in batch.items()})
