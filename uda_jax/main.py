"""Entry point: python -m uda_jax.main --config configs/adaptsegnet.py[:preset] --workdir DIR [--mode eval]."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from uda_jax import train
from uda_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/adaptsegnet.py:toy",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and result tables.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes automatically) or eval.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.parse_flags_with_absl()
  logging.info("devices: %s", jax.devices())
  try:
    if _MODE.value == "train":
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
