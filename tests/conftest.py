import os
import sys

import pytest

import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
# One persistent compilation cache for the session and its subprocesses: tests compile the same steps often.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "uda_jax_test_jit_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from uda_jax import xla_flags  # pylint: disable=g-import-not-at-top,wrong-import-position
xla_flags.apply()  # the suite's in-process steps run with the same XLA:CPU flags as the trainer


@pytest.fixture
def toy_config():
  """The toy preset, shrunk so a step compiles and runs in seconds."""
  import adaptsegnet  # pylint: disable=g-import-not-at-top
  c = adaptsegnet.get_config("toy")
  c.model.width = 8
  c.disc.channels = (8, 8, 8, 8)
  return c


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory):
  """A small prepared copy of the toy pair (64 train / 20 validation images per domain)."""
  from uda_jax.data import builders  # pylint: disable=g-import-not-at-top
  from uda_jax.data.builders import uda_toy  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  saved = {k: dict(v) for k, v in uda_toy.SPLIT_SIZES.items()}
  try:
    for domain in uda_toy.SPLIT_SIZES:
      uda_toy.SPLIT_SIZES[domain] = {"train": 64, "validation": 20}
      builders.ensure_prepared(builders.get_builder(f"uda_toy/{domain}", data_dir), auto_prepare=True)
  finally:
    uda_toy.SPLIT_SIZES.update(saved)
  return data_dir


@pytest.fixture
def tiny_toy_config(toy_config, toy_data_dir):
  """The toy preset on the small prepared toy data, a few steps, evaluation and checkpoints every 2 steps."""
  c = toy_config
  c.data.data_dir = toy_data_dir
  c.data.source_size = c.data.target_size = c.data.eval_size = (32, 64)
  c.data.batch_size = 2
  c.data.eval_batch_size = 8
  c.optim.decay_steps = 100
  c.train.num_steps = 4
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 2
  return c
