"""SIGTERM (TPU maintenance, SLURM preemption, `kill`): every process saves at the same step and exits 0.

Multi-process runs use JAX's preemption sync manager, started by jax.distributed.initialize: it catches SIGTERM
on any process and makes `reached_preemption_sync_point(step)` true on all of them at the same step, so they all
save that step together. A single process has no coordination service; a Python SIGTERM handler sets the flag
that the loop reads at the end of the step. Either way the loop stops within one step and one save.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
  def __init__(self):
    self._signalled = False
    self._previous = None
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    """Whether to save at `step` (the number of finished steps) and stop; call it at every step."""
    if self._multi:
      try:
        hit = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
        return False
    else:
      hit = self._signalled
    if hit:
      logging.warning("preempted: saving step %d and stopping; run the same command again to resume", step)
    return hit

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
