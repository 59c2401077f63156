"""Orbax checkpoints of the whole run: the last K by step, and the best by target mIoU.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run killed while
saving leaves no half-written checkpoint behind; restoring picks the newest complete one.
"""

import os

import jax
import orbax.checkpoint as ocp


def abstract(tree):
  """Shape/dtype/sharding of every leaf: restoring into it puts each leaf where the live state has it
  (without explicit shardings, optimizer counters come back on one device: pitfalls.md)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
  def __init__(self, workdir: str, keep: int = 3):
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.last = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=opts)
    best_opts = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["mIoU"], best_mode="max",
                                             create=True)
    self.best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "best"), options=best_opts)

  def save(self, step: int, states):
    self.last.save(step, args=ocp.args.StandardSave(states), force=True)

  def save_if_best(self, step: int, states, miou: float):
    self.best.save(step, args=ocp.args.StandardSave(states), metrics={"mIoU": float(miou)}, force=True)

  def latest_step(self, which: str = "latest"):
    manager = self.best if which == "best" else self.last
    return manager.best_step() if which == "best" else manager.latest_step()

  def restore(self, states, which: str = "latest"):
    """(restored states, step), or (states, None) when there is no checkpoint of that kind."""
    step = self.latest_step(which)
    if step is None:
      return states, None
    manager = self.best if which == "best" else self.last
    return manager.restore(step, args=ocp.args.StandardRestore(abstract(states))), step

  def close(self):
    for m in (self.last, self.best):
      m.wait_until_finished()
      m.close()
