"""UDA_JAX_* switches that force a CPU-only rewrite or kernel on (1) or off (0); read at trace time."""

import contextlib
import os

from uda_jax.errors import UserError


def forced(name: str) -> bool | None:
  """True / False when environment variable `name` is 1 / 0, None when unset or empty; else an error naming it."""
  value = os.environ.get(name, "")
  if value not in ("", "0", "1"):
    raise UserError(f"{name} must be 0 or 1, got {value!r}")
  return None if value == "" else value == "1"


@contextlib.contextmanager
def setting(values: dict[str, str]):
  """Sets environment variables (switches read at trace time) for the duration of the block, then restores them."""
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in saved.items():
      os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
