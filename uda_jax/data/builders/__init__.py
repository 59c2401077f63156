"""TFDS builders of the project's datasets, and how to find and prepare them.

Every builder module in this package registers its class with tfds on import; `get_builder` imports them all
(tfds only knows builders whose module was imported) and resolves tfds names like `uda_toy/source`.
"""

import importlib
import os
import pkgutil
import textwrap

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from uda_jax.errors import UserError


class DatasetNotPreparedError(UserError):  # A ValueError; main.py prints it without a traceback.
  """A dataset is not prepared in the data_dir it was looked for in, and cannot be prepared automatically."""


_import_errors: dict[str, Exception] = {}


def _register_builders() -> None:
  """Imports every module of this package once, so that its builders are registered with tfds."""
  for module in pkgutil.iter_modules(__path__):
    full_name = f"{__name__}.{module.name}"
    if full_name in _import_errors:
      continue
    try:
      importlib.import_module(full_name)
    except Exception as e:  # pylint: disable=broad-except
      # One broken builder must not hide the others; the error resurfaces if its dataset is asked for.
      _import_errors[full_name] = e
      logging.warning("Could not import builder module %s: %r", full_name, e)


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The builder of `name` ('dataset[/config][:version]', tfds syntax) reading from data_dir (None: default)."""
  if not name:
    raise UserError("A dataset name is empty: set data.source / data.target / data.eval (FADA's :sd stage reads "
                    "the pseudo-labels that --mode=predict writes: --config.data.source=THAT_OUTPUT_DIR).")
  if tf.io.gfile.exists(os.path.join(name, "manifest.json")):  # a --mode=predict output directory
    from uda_jax import predict  # pylint: disable=g-import-not-at-top
    path = predict.tfds_dir(name)
    if path is None:
      raise UserError(f"{name} holds predictions of a folder of images, which have no dataset to train on; "
                      "predict on a dataset split (predict.dataset / predict.split) instead.")
    return tfds.builder_from_directory(path)
  _register_builders()
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    broken = "".join(f"\n  {module}: {err!r}" for module, err in _import_errors.items())
    raise UserError(
        f"Unknown dataset {name!r}."
        + (f" These builder modules failed to import:{broken}" if broken else "")
    ) from e


def ensure_prepared(builder: tfds.core.DatasetBuilder, auto_prepare: bool) -> tfds.core.DatasetBuilder:
  """Returns builder once its data is prepared; generates datasets that need no manual data if allowed.

  Raises DatasetNotPreparedError (naming the dataset, the data_dir and the command to run) otherwise.
  """
  if builder.is_prepared():
    return builder
  name = builder.info.full_name.rsplit("/", 1)[0]  # 'name/config', without the version.
  data_dir = builder.data_dir_root
  manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  if manual or not auto_prepare:
    command = f"python -m uda_jax.data.prepare {name}{' --manual_dir DIR' if manual else ''} --data_dir {data_dir}"
    raise DatasetNotPreparedError(
        f"Dataset {name!r} (version {builder.version}) is not prepared in data_dir {str(data_dir)!r}"
        f" ({_describe_dir(data_dir)}). Prepare it with\n  {command}"
        + (f"\nwhere DIR holds the original files:\n{textwrap.dedent(manual).strip()}" if manual else "")
    )
  logging.info("Preparing %s in %s.", name, data_dir)
  try:
    builder.download_and_prepare(file_format="array_record")
  except Exception:
    # Another process (multi-host, shared data_dir) may have finished the same preparation first.
    if not builder.is_prepared():
      raise
  return builder


def _describe_dir(path) -> str:
  path = os.fspath(path)
  if not tf.io.gfile.exists(path):
    return "the directory does not exist"
  if not tf.io.gfile.listdir(path):
    return "the directory is empty"
  return "the directory exists but holds no prepared copy of this dataset and version"
