"""Pure-functional train state: a pytree of step, params, BatchNorm statistics and optimizer state."""

from typing import Any

import jax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
  batch_stats: Any = struct.field(default_factory=dict)


def create(module, tx, variables) -> TrainState:
  return TrainState.create(apply_fn=module.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def num_params(state: TrainState) -> int:
  return sum(x.size for x in jax.tree.leaves(state.params))
