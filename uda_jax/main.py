"""Entry point: python -m uda_jax.main --config configs/adaptsegnet.py[:preset] --workdir DIR [--mode eval|predict]."""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from uda_jax import checkpoint, cli, predict, train
from uda_jax.errors import RunStopped, UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/adaptsegnet.py:toy",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and result tables.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (resumes automatically), eval, or predict (writes label PNGs; config.predict).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host: TPU "
                                  "pods and SLURM are auto-detected; else set JAX_COORDINATOR_ADDRESS, "
                                  "JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    jax = cli.start_jax(_DISTRIBUTED.value)
    logging.info("process %d of %d; devices: %s; XLA_FLAGS=%r", jax.process_index(), jax.process_count(),
                 jax.devices(), os.environ.get("XLA_FLAGS", ""))
    if _MODE.value == "train":
      train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "eval":
      train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    else:
      out = predict.run(_CONFIG.value, _WORKDIR.value,
                        lambda c, w, mesh: train.restore_for_inference(c, w, mesh, "predict"))
      print(f"predictions in {out}", flush=True)
  except UserError as e:
    cli.exit_with_user_error(e)
  except (RunStopped, checkpoint.CheckpointError) as e:
    cli.exit_with_user_error(e, code=1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
