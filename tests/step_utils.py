"""Random batches and states for step-level tests; resumed training and tiny command-line runs for run-level
ones."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from uda_jax import methods, parallel, steps, train
from uda_jax.kernels import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests that assert the CPU kernels run: without a compiler they cannot be built (training then falls back to XLA).
NO_COMPILER = "no C++ compiler to build the CPU kernels" if build.compiler() is None else None
needs_compiler = pytest.mark.skipif(NO_COMPILER is not None, reason=NO_COMPILER or "")


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


def assert_resume_is_bit_exact(c, tmp_path):
  """Trains `c` 4 steps straight and 2 + 2 steps (a restart from the step-2 checkpoint); asserts every leaf of
  every state equal and returns the straight states."""
  c.train.num_steps = 4
  straight, _ = train.train_and_evaluate(c, str(tmp_path / "straight"))
  c.train.num_steps = 2
  train.train_and_evaluate(c, str(tmp_path / "resumed"))
  c.train.num_steps = 4
  resumed, _ = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert sorted(straight) == sorted(resumed)
  for name in straight:
    for a, b in zip(jax.tree.leaves(jax.device_get(straight[name])), jax.tree.leaves(jax.device_get(resumed[name])),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  return straight


def tiny_toy_cli(config_arg, workdir, data_dir, *extra):
  """A function running `python -m uda_jax.main --config=config_arg` on the toy at width 8 and 32x64, 2 steps
  evaluated and checkpointed at step 2, with more flags per call."""
  small = [f"--config.data.data_dir={data_dir}", "--config.train.num_steps=2", "--config.train.eval_every=2",
           "--config.train.checkpoint_every=2", "--config.train.log_every=1", "--config.model.width=8",
           "--config.disc.channels=(8,8,8,8)", "--config.data.source_size=(32,64)",
           "--config.data.target_size=(32,64)", "--config.data.eval_size=(32,64)", *extra]
  return lambda *args: subprocess.run([sys.executable, "-m", "uda_jax.main", f"--config={config_arg}",
                                       f"--workdir={workdir}", *small, *args], capture_output=True, text=True,
                                      timeout=900, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
