"""Writing result files: atomically (a killed run never leaves half a file) and through tf.io.gfile, so a
workdir or data_dir may be a bucket path as well as a local folder."""

import os
import uuid

import tensorflow as tf


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes data to a temporary name beside path, then renames it over path."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def read_text(path: str) -> str | None:
  """The file's text, or None if it does not exist."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, "r") as f:
    return f.read()
