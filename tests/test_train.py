"""Checkpoints round-trip params and optimizer state onto the live states' devices (killed and resumed runs:
test_resilience.py, test_multiprocess.py)."""


import jax
import numpy as np

from step_utils import init, random_batch
from uda_jax import checkpoint


def _leaves(tree):
  return jax.tree.leaves(jax.device_get(tree))


def test_checkpoint_round_trip_restores_params_and_optimizer_state(toy_config, tmp_path):
  batch = random_batch()
  _, _, states = init(toy_config, batch)
  toy_config.seed = 1
  _, _, other = init(toy_config, batch)  # a different init to restore into
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(states), _leaves(other)))
  ckpt = checkpoint.Checkpoints(str(tmp_path))
  ckpt.save(7, states)
  restored, step = ckpt.restore(other)
  ckpt.close()
  assert step == 7
  paths = lambda t: [k for k, _ in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(restored) == paths(states)
  for a, b in zip(_leaves(restored), _leaves(states)):
    np.testing.assert_array_equal(a, b)
  # Every restored leaf sits where the live state has it (replicated over the mesh).
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states)):
    assert a.sharding == b.sharding
