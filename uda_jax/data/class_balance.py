"""FADA's class-balanced source sampling (JDAI-CV/FADA core/datasets/gta5.py, the `max_iters` branch).

Draws come in sub-epochs of 3000. Within one, `counts[c]` is how many drawn images contained class c; the next
class is drawn with weight 1 / log(1.01 + counts[c] / sum(counts)) (uniform at the sub-epoch's start), and the
next image is taken from that class's own shuffled list of images containing it, which then adds 1 to the count
of every class the image contains. Rare classes are drawn far more often than uniform sampling would.

Departures from the official code: sub-epoch k is generated from a generator seeded by (seed, stream, k) alone,
with fresh per-class lists, so that any position can be looked up without replaying the sub-epochs before it
(exact resume); the official per-class cursors carry over from one sub-epoch to the next. Classes no image
contains are never drawn (the official code would crash on them).

Which classes an image contains is computed once per (prepared split, label map) by one pass over the labels
and cached next to the prepared dataset.
"""

import io
import os
import time
import zlib
from typing import Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from uda_jax import files
from uda_jax.data import sampling
from uda_jax.data.labels import IGNORE
from uda_jax.errors import UserError

SUB_EPOCH = 3000


def num_classes(table: np.ndarray) -> int:
  """Number of train ids of a label table: its largest non-ignore value + 1."""
  values = np.asarray(table)[np.asarray(table) != IGNORE]
  return int(values.max()) + 1 if values.size else 0


# ---------------------------------------------------------------------------------------------------------------
# Class presence.


def class_presence(records: Sequence[bytes], features: tfds.features.FeaturesDict, table: np.ndarray, *,
                   cache_dir: str, split: str, label_map: str) -> np.ndarray:
  """bool [N, C]: whether example i's label holds train id c (C = num_classes(table)), cached in cache_dir.

  The cache file's name carries the split, the label map's name and a hash of its table, so an edited table is
  never served a stale cache. A cache that cannot be written only costs a warning.
  """
  table = np.asarray(table, np.uint8)
  shape = (len(records), num_classes(table))
  path = os.path.join(str(cache_dir), f"class_presence_{split}_{label_map}_{zlib.crc32(table.tobytes()):08x}.npy")
  cached = _load(path, shape)
  if cached is not None:
    return cached
  start = time.time()
  raw = _raw_presence(records, features)
  one_hot = (table[:, None] == np.arange(shape[1])).astype(np.int32)  # raw id -> train id, [256, C]
  presence = raw.astype(np.int32) @ one_hot > 0
  logging.info("Class presence of %d images (%s, %s) took %.1f s.", shape[0], split, label_map, time.time() - start)
  _save(path, presence)
  return presence


def _raw_presence(records, features) -> np.ndarray:
  """bool [N, 256]: which raw label values each example holds; PNG decoding runs in parallel in tf.data."""

  getitems = getattr(records, "__getitems__", lambda indices: [records[i] for i in indices])

  def chunks():  # Batched reads: one random-access call per 256 records.
    for start in range(0, len(records), 256):
      yield from getitems(list(range(start, min(start + 256, len(records)))))

  def raw_ids(serialized):
    example = features.deserialize_example(serialized, decoders={"image": tfds.decode.SkipDecoding()})
    label = tf.cast(tf.reshape(example["label"], [-1]), tf.int32)
    return tf.math.bincount(label, minlength=256, maxlength=256) > 0

  ds = tf.data.Dataset.from_generator(chunks, output_signature=tf.TensorSpec([], tf.string))
  ds = ds.map(raw_ids, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
  out = [batch for batch in ds.as_numpy_iterator()]
  return np.concatenate(out) if out else np.zeros((0, 256), bool)


def _load(path: str, shape) -> np.ndarray | None:
  try:
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "rb") as f:
      array = np.load(io.BytesIO(f.read()), allow_pickle=False)
  except (tf.errors.OpError, OSError, ValueError) as e:
    logging.warning("Ignoring unreadable class presence cache %s: %s", path, e)
    return None
  if array.shape != shape or array.dtype != bool:
    logging.warning("Ignoring class presence cache %s: shape %s, expected %s.", path, array.shape, shape)
    return None
  return array


def _save(path: str, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  try:
    files.write_atomic(path, buffer.getvalue())
  except (tf.errors.OpError, OSError) as e:
    logging.warning("Could not cache class presence at %s (%s); keeping it in memory only.", path, e)


# ---------------------------------------------------------------------------------------------------------------
# Sampling.


class ClassBalancedSampler(sampling.ChunkedSampler):
  """Example index at each position of an endless class-balanced stream.

  Position p reads sub-epoch p // sub_epoch, each a pure function of (seed, stream, sub-epoch index).
  """

  def __init__(self, presence: np.ndarray, seed: int, stream: str, sub_epoch: int = SUB_EPOCH):
    super().__init__()
    self.presence = np.asarray(presence, bool)
    self.n, num = self.presence.shape
    self.drawable = self.presence.any(axis=0)
    if not self.drawable.any():
      raise UserError(f"Class-balanced sampling (stream {stream!r}): no image contains any class.")
    self.sub_epoch = self.size = sub_epoch
    self._members = [np.flatnonzero(self.presence[:, c]) for c in range(num)]
    self._key = (int(seed) % 2**63, zlib.crc32(stream.encode()), zlib.crc32(b"class_balanced"))

  def chunk(self, k: int) -> np.ndarray:
    """Example indices of sub-epoch k."""
    rng = np.random.default_rng([*self._key, k])
    counts = np.zeros(len(self._members))
    orders: dict[int, np.ndarray] = {}
    cursors = np.zeros(len(self._members), np.int64)
    out = np.empty(self.sub_epoch, np.int64)
    for i in range(self.sub_epoch):
      total = counts.sum()
      weights = np.where(self.drawable, 1.0 / np.log(1.01 + (counts / total if total else counts)), 0.0)
      cumulative = np.cumsum(weights)
      # side='right' never lands on a zero-weight (undrawable) class.
      c = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
      if c not in orders or cursors[c] == len(orders[c]):  # Each class cycles through its own shuffled list.
        orders[c], cursors[c] = rng.permutation(self._members[c]), 0
      out[i] = orders[c][cursors[c]]
      cursors[c] += 1
      counts += self.presence[out[i]]
    return out
