"""What every command line of the project shares: one-line config errors, starting JAX, quiet Orbax logs."""

import logging as std_logging
import os
import re
import sys
import threading

from absl import flags, logging

from uda_jax import host_memory, xla_flags
from uda_jax.errors import UserError


def parse_flags(argv):
  """absl flag parsing, with a user's config mistake reported in one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    for name in ("config",):  # config files load lazily: a missing one would fail later, with a traceback
      if name in flags.FLAGS and flags.FLAGS[name].present:
        flags.FLAGS[name].value.keys  # pylint: disable=pointless-statement
    return rest
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    message = str(e).strip().splitlines()[-1]  # config_flags embeds the traceback; the cause is its last line
    message = re.sub(r"^[\w.]+(Error|Exception): ", "", message.strip())  # no exception class before the cause
    if isinstance(e, OSError):
      message = f"cannot load the config file: {message}"
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
  # Orbax logs every save step at INFO: keep its warnings and errors only, and those without the tracebacks of
  # its background threads (a failed save is reported once, in one line, by checkpoint.CheckpointError).
  if "orbax" not in record.pathname:
    return True
  record.exc_info, record.exc_text = None, None
  return record.levelno >= std_logging.WARNING


def prepare_cpu() -> bool:
  """Before JAX starts a backend: the XLA:CPU flags and the malloc settings, each unless its absl flag turns it
  off; returns whether malloc keeps freed host memory."""
  xla_flags.apply(xla_flags.ENABLED.value)
  return host_memory.apply(host_memory.ENABLED.value)


def start_jax(distributed: bool):
  """prepare_cpu(), JAX's absl flags, the cluster if asked; returns jax."""
  prepare_cpu()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.parse_flags_with_absl()
  if distributed:
    try:
      args = cluster_args(os.environ)
      # CPU processes need an explicit collectives library to reach each other (no effect on GPU / TPU).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(**args)
    except (ValueError, RuntimeError) as e:
      if isinstance(e, UserError):
        raise
      raise UserError(f"--distributed: {str(e).strip().splitlines()[-1]} (no cluster was detected: on a TPU pod "
                      "or under SLURM run on every worker / task; elsewhere set JAX_COORDINATOR_ADDRESS=HOST:PORT "
                      "of process 0, JAX_NUM_PROCESSES and JAX_PROCESS_ID)") from None
  logging.get_absl_logger().addFilter(_quiet_orbax)
  # A failed asynchronous save also fails callbacks on Orbax's closed event loops; report them in one line each.
  sys.unraisablehook = lambda u: logging.warning("ignored in %r: %s: %s", u.object, type(u.exc_value).__name__,
                                                 u.exc_value)
  threading.excepthook = lambda a: logging.error("thread %s: %s: %s", a.thread.name if a.thread else "?",
                                                 a.exc_type.__name__, a.exc_value)
  return jax


def cluster_args(environ) -> dict:
  """jax.distributed.initialize arguments from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
  (JAX itself reads only the first); {} when none is set, for JAX to detect TPU pods, SLURM, MPI..."""
  address, count, index = (environ.get(k, "").strip() for k in _CLUSTER_ENV)
  if not (address or count or index):
    return {}
  if not address:
    raise UserError("JAX_NUM_PROCESSES / JAX_PROCESS_ID are set but JAX_COORDINATOR_ADDRESS is not: set it to "
                    "HOST:PORT of process 0 on every process")
  if not (count or index):
    return {"coordinator_address": address}  # the rest from the cluster's own environment
  try:
    count_i, index_i = int(count), int(index)
  except ValueError:
    raise UserError(f"JAX_NUM_PROCESSES={count!r} and JAX_PROCESS_ID={index!r}: both must be set to integers") from None
  if count_i < 1 or not 0 <= index_i < count_i:
    raise UserError(f"JAX_PROCESS_ID={index_i} with JAX_NUM_PROCESSES={count_i}: the id must be in "
                    f"0..{count_i - 1}")
  return {"coordinator_address": address, "num_processes": count_i, "process_id": index_i}


_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def exit_with_user_error(error: Exception, code: int = 2):
  """One line on stderr and exit `code` (2: the user's input; 1: a run that stopped, e.g. diverged)."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  # No interpreter teardown: an open tf.data iterator (numpy_function stages) can deadlock in its destructor
  # at exit, and nothing of a run that failed on the user's input needs cleaning up.
  os._exit(code)
