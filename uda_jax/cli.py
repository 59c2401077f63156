"""What every command line of the project shares: one-line config errors, starting JAX, quiet Orbax logs."""

import logging as std_logging
import os
import re
import sys

from absl import flags, logging

from uda_jax import xla_flags


def parse_flags(argv):
  """absl flag parsing, with a user's config mistake reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip().splitlines()[-1]  # config_flags embeds the traceback; the cause is its last line
    if isinstance(e, (AttributeError, KeyError)):
      key = re.search(r"'(\w+)", str(e))
      key = key.group(1) if key else str(e)
      culprits = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
      hint = re.search(r'Did you mean "(\w+)"', str(e))
      message = (f"unknown config key {key!r} in {' '.join(culprits) or 'the overrides'}"
                 + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _quiet_orbax(record):
  # Orbax logs every save step at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def start_jax(distributed: bool):
  """XLA:CPU flags before JAX starts a backend, JAX's absl flags, the cluster if asked; returns jax."""
  xla_flags.apply(xla_flags.ENABLED.value)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.parse_flags_with_absl()
  if distributed:
    jax.distributed.initialize()
  logging.get_absl_logger().addFilter(_quiet_orbax)
  return jax


def exit_with_user_error(error: Exception):
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  # No interpreter teardown: an open tf.data iterator (numpy_function stages) can deadlock in its destructor
  # at exit, and nothing of a run that failed on the user's input needs cleaning up.
  os._exit(2)
