"""Entry point: python -m uda_jax.main --config configs/adaptsegnet.py[:preset] --workdir DIR [--mode eval|predict]."""

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from uda_jax import predict, train, xla_flags
from uda_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/adaptsegnet.py:toy",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and result tables.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (resumes automatically), eval, or predict (writes label PNGs; config.predict).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host: TPU "
                                  "pods and SLURM are auto-detected; else set JAX_COORDINATOR_ADDRESS, "
                                  "JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record):
  # Orbax logs every save step at INFO; keep its warnings and errors only.
  return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _parse_flags(argv):
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  xla_flags.apply(xla_flags.ENABLED.value)  # before JAX starts a backend
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.parse_flags_with_absl()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.get_absl_logger().addFilter(_quiet_orbax)
  logging.info("devices: %s; XLA_FLAGS=%r", jax.devices(), os.environ.get("XLA_FLAGS", ""))
  try:
    if _MODE.value == "train":
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "eval":
      train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    else:
      out = predict.run(_CONFIG.value, _WORKDIR.value,
                        lambda c, w, mesh: train.restore_for_inference(c, w, mesh, "predict"))
      print(f"predictions in {out}", flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # No interpreter teardown: an open tf.data iterator (numpy_function stages) can deadlock in its destructor
    # at exit, and nothing of a run that failed on the user's input needs cleaning up.
    os._exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
