"""Orbax checkpoints of the whole run: the last K by step (`checkpoints/`), and the best by target mIoU (`best/`).

What makes them survive a run's accidents:
- Orbax writes a checkpoint into a temporary directory, renamed when complete: a save killed half-way leaves
  nothing that a restart would pick up. Saves are asynchronous: the step loop goes on while they are written.
- A checkpoint that fails to restore, or restores with a non-finite value, is moved to `corrupt/` with a warning
  and the previous complete one is used.
- `best/` may hold steps after the checkpoint a run resumes from (a run killed between the two managers'
  saves): they belong to a future that is recomputed, so they are dropped on resume.
- A failed save (full or unwritable disk) raises CheckpointError: one line naming the directory and the cause.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils



class CheckpointError(RuntimeError):
  """A checkpoint could not be written: the message names the directory and the cause."""


def abstract(tree):
  """Shape/dtype/sharding of every leaf: restoring into it puts each leaf where the live state has it
  (without explicit shardings, optimizer counters come back on one device: pitfalls.md)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _cause(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def _key_name(k) -> str:
  # A TrainState's fields and a saved dict's keys name the same leaf differently (attribute vs item).
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def structure_differences(tree, metadata, limit: int = 6) -> list[str]:
  """'path: checkpoint (shape) vs now (shape)' for every leaf that is missing, extra or reshaped."""
  flat = lambda t: {"/".join(_key_name(k) for k in p): tuple(getattr(x, "shape", ()) or ())
                    for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  now, saved = flat(tree), flat(metadata)
  out = [f"{k}: only in the checkpoint" for k in sorted(saved.keys() - now.keys())]
  out += [f"{k}: not in the checkpoint" for k in sorted(now.keys() - saved.keys())]
  out += [f"{k}: {saved[k]} in the checkpoint, {now[k]} now" for k in sorted(now.keys() & saved.keys())
          if saved[k] != now[k]]
  return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def read_any_topology(path: str):
  """The tree saved at `path` (a step's item directory, e.g. RUN/checkpoints/400/default) as plain dicts of
  arrays on this process's first device, whatever devices and processes saved it: restoring with the saved
  shardings fails when the topology differs (a multi-host run read on one machine)."""
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        getattr(meta, "item_metadata", meta))
  return checkpointer.restore(path, target)


class Checkpoints:
  """read_only (evaluation, prediction): never creates, cleans up or moves anything, so it can read the
  workdir of a live training run without touching the save that run has in flight."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.read_only = read_only
    self._skipped = set()  # read-only: unusable (manager, step) pairs, passed over instead of moved
    opts = dict(create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only)
    self.last = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts, multiprocessing_options=_prefix("last")))
    self.best = ocp.CheckpointManager(
        os.path.join(self.workdir, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["mIoU"], best_mode="max", **opts,
                                             multiprocessing_options=_prefix("best")))

  def _manager(self, which):
    return self.best if which == "best" else self.last

  def save(self, step: int, states):
    self._save(self.last, step, states)

  def save_if_best(self, step: int, states, miou: float):
    if step not in self.best.all_steps():  # already there: a resumed run re-evaluating a saved step
      self._save(self.best, step, states, metrics={"mIoU": float(miou)})

  def _save(self, manager, step, states, metrics=None):
    self.check(step)
    try:
      manager.save(step, args=ocp.args.StandardSave(states), metrics=metrics, force=True)
    except Exception as e:  # pylint: disable=broad-except
      # The cause may be an earlier asynchronous save of this manager; its message names the failed file.
      raise CheckpointError(f"saving to {manager.directory} failed (step {step}): {_cause(e)}") from None

  def check(self, step: int):
    """Raises CheckpointError if an asynchronous save failed since the last check (the loop calls it often)."""
    for m in (self.last, self.best):
      try:
        m.check_for_errors()
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"saving to {m.directory} failed (step {step}): {_cause(e)}") from None

  def latest_step(self, which: str = "latest"):
    manager = self._manager(which)
    if self._skipped:  # read-only after an unusable checkpoint (best/ keeps one: then there is none)
      return max((s for s in manager.all_steps() if (which, s) not in self._skipped), default=None)
    return manager.best_step() if which == "best" else manager.latest_step()

  def metadata_differences(self, states, which: str = "latest") -> list[str]:
    """How the structure of `states` differs from the checkpoint that `restore` would read ([] = none)."""
    step = self.latest_step(which)
    if step is None:
      return []
    try:
      meta = ocp.StandardCheckpointer().metadata(os.path.join(str(self._manager(which).directory), str(step),
                                                              "default"))
    except Exception:  # pylint: disable=broad-except
      return []  # unreadable metadata: restore() reports the checkpoint as corrupt
    return structure_differences(states, getattr(meta, "item_metadata", meta))

  def restore(self, states, which: str = "latest"):
    """(restored states, step), or (states, None) when there is no usable checkpoint of that kind. A checkpoint
    that fails to restore or holds a non-finite value is moved to workdir/corrupt/ and the previous one tried."""
    manager = self._manager(which)
    while (step := self.latest_step(which)) is not None:
      try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract(states)))
        bad = _non_finite(restored)
        if not bad:
          return restored, step
        problem = f"non-finite values in {', '.join(bad)}"
      except Exception as e:  # pylint: disable=broad-except
        problem = _cause(e)
      if self.read_only:
        logging.warning("checkpoint %s/%d is unusable (%s); using the previous one", manager.directory, step, problem)
        self._skipped.add((which, step))
      else:
        self._quarantine(manager, step, problem)
    return states, None

  def _quarantine(self, manager, step, problem):
    src = os.path.join(str(manager.directory), str(step))
    dst = os.path.join(self.workdir, "corrupt", f"{os.path.basename(str(manager.directory))}_{step}")
    logging.warning("checkpoint %s is unusable (%s); moved to %s, using the previous one", src, problem, dst)
    if jax.process_index() == 0:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: GCS workdirs; lazy so a
      # benchmark runs where only JAX is installed)
      tf.io.gfile.makedirs(os.path.dirname(dst))
      if tf.io.gfile.exists(dst):
        tf.io.gfile.rmtree(dst)
      tf.io.gfile.rename(src, dst)
    _sync(f"quarantine_{os.path.basename(dst)}")
    manager.reload()

  def drop_best_after(self, step: int):
    """Removes best/ checkpoints of steps after `step` (a resumed run recomputes them)."""
    for s in self.best.all_steps():
      if s > step:
        logging.info("dropping best/%d: the run resumes from step %d", s, step)
        self.best.delete(s)
    self.best.reload()

  def wait(self):
    """Blocks until pending saves are on disk; a failed one raises CheckpointError."""
    for m in (self.last, self.best):
      try:
        m.wait_until_finished()
        m.check_for_errors()
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"saving to {m.directory} failed: {_cause(e)}") from None

  def close(self):
    try:
      self.wait()
    finally:
      for m in (self.last, self.best):
        m.close()


def _prefix(name):
  # Two managers in one run: their multi-process barriers must not share keys.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _sync(name):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _non_finite(tree) -> list[str]:
  """Names of the states' sub-trees (e.g. 'seg batch_stats') holding NaN or Inf, checked on the host."""
  bad = []
  for name, state in tree.items():
    for part in ("params", "batch_stats", "opt_state"):
      # States are replicated: this process's first shard is the whole array.
      leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(getattr(state, part, None))]
      if any(np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all() for x in leaves):
        bad.append(f"{name} {part}")
  return bad

