"""One live run per workdir, and the config of every start of it on record.

The lock is an flock on WORKDIR/.lock held by process 0 for the run's lifetime: the kernel drops it when the
process dies, however it dies, so a dead run's lock is simply taken over (its pid and host are logged). Bucket
paths (gs://...) cannot be flocked; they are not locked.

Every start writes WORKDIR/config_history/<time>_step<N>.json (the full config, and what changed since the
previous start); WORKDIR/config.json is the config of the latest start.
"""

import datetime
import fcntl
import json
import os
import socket

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from uda_jax import files
from uda_jax.errors import UserError


class Lock:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self):
    """Takes the lock on process 0 and tells every process; raises UserError if a live run holds it."""
    held_by = self._try() if jax.process_index() == 0 else ""
    if jax.process_count() > 1:
      held_by = "a live run" if int(multihost_utils.broadcast_one_to_all(np.int32(bool(held_by)))) else ""
    if held_by:
      raise UserError(f"{os.path.dirname(self.path)} is in use by {held_by}; wait for it to end, stop it, or "
                      "give another --workdir")
    return self

  def _try(self) -> str:
    if "://" in self.path:
      logging.info("%s is a bucket path: not locked against a second run", self.path)
      return ""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    previous = os.read(fd, 4096).decode(errors="replace").strip()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return f"a live run ({previous or 'starting'})"
    if previous:
      logging.warning("taking over the lock of a run that ended: %s", previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
    self._fd = fd
    return ""

  def release(self):
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # empty: the run ended cleanly
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _now():
  return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def flat_config(config) -> dict:
  """{dotted key: JSON value} of a ConfigDict (tuples as lists, so a saved config compares equal)."""
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(json.loads(config.to_json_best_effort()), "")
  return out


def changes(old: dict, new: dict) -> dict:
  """{key: [old, new]} of every field that differs (a missing side is None)."""
  return {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def describe(diff: dict, limit: int = 8) -> str:
  items = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]
  return "; ".join(items[:limit]) + (f"; ... {len(items) - limit} more" if len(items) > limit else "")


def last_config(workdir: str) -> dict | None:
  text = files.read_text(os.path.join(workdir, "config.json"))
  return json.loads(text) if text else None


def record_config(workdir: str, config, step: int) -> dict:
  """Writes this start's config (process 0); returns the fields changed since the previous start, logged."""
  new = flat_config(config)
  old = last_config(workdir)
  diff = changes(old, new) if old is not None else {}
  if diff:
    logging.warning("config changed since the previous start of %s: %s", workdir, describe(diff))
  if jax.process_index() == 0:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    entry = {"step": step, "time": _now(), "changes": diff, "config": new}
    files.write_atomic(os.path.join(workdir, "config_history", f"{stamp}_step{step}.json"),
                       json.dumps(entry, indent=1))
    files.write_atomic(os.path.join(workdir, "config.json"), json.dumps(new, indent=1))
  return diff
