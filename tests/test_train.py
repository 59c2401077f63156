"""The train loop: checkpoints round-trip, a killed run resumes exactly, results are written."""

import json
import os

import jax
import numpy as np

from step_utils import init, random_batch
from uda_jax import checkpoint, train


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


def test_killed_run_resumes_to_identical_params(tiny_toy_config, tmp_path):
  straight, _ = train.train_and_evaluate(tiny_toy_config, str(tmp_path / "straight"))
  resumed_dir = str(tmp_path / "resumed")
  tiny_toy_config.train.num_steps = 2
  train.train_and_evaluate(tiny_toy_config, resumed_dir)  # "killed" after step 2 (checkpoint at 2)
  tiny_toy_config.train.num_steps = 4
  resumed, summary = train.train_and_evaluate(tiny_toy_config, resumed_dir)
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert int(resumed["seg"].step) == 4
  assert sorted(os.listdir(os.path.join(resumed_dir, "checkpoints"))) == ["2", "4"]
  with open(os.path.join(resumed_dir, "eval_final.json")) as f:
    written = json.load(f)
  assert written["step"] == 4 and abs(written["mIoU"] - summary["mIoU"]) < 1e-9
  assert set(written["per_class"]) == {"road", "sidewalk", "building", "fence", "pole", "sign", "vegetation",
                                       "terrain", "sky", "person", "car"}
