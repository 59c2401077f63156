"""tf.data input pipelines: exact, resumable, multi-host.

The global batch of training step s is a pure function of (seed, s): example indices come from a per-epoch
permutation seeded by (seed, epoch, stream), read by random access from the prepared array_record files. A run
resumed at step s therefore sees exactly the batches an uninterrupted run sees, and every process reads only
its contiguous slice of the global batch. Python only picks indices and fetches serialized records; parsing,
PNG decoding, augmentation, resizing, label mapping and normalisation run in tf.data graph functions on
tf.data's threads. Training augmentations are stateless: the example at global stream position
p = step * batch_size + i is augmented with a seed derived from (seed, role, p), so they too are a pure function
of (seed, step), whatever the process count.

`data_cfg` is `config.data` (an ml_collections.ConfigDict or any object with the same attributes):
  data_dir ('' = tfds default), source / source_split, target / target_split, eval / eval_split (tfds names
  like 'uda_toy/source'), source_label_map / eval_label_map (keys of labels.LABEL_MAPS), source_size,
  target_size, eval_size, eval_label_size ((H, W) or None = native), normalization, batch_size (global, per
  domain), eval_batch_size (global), auto_prepare;
  source_aug / target_aug (augment.Augment fields: scale, crop, flip, jitter, pad_image; absent or None = none):
  with crop=(H, W) the image is randomly scaled relative to {role}_size (None: its native size), then randomly
  cropped to crop; without crop it is resized to {role}_size as usual;
  class_balanced (draw the source stream with class_balance.ClassBalancedSampler instead of epochs).
"""

import dataclasses
from typing import Any, Iterator, Sequence
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from uda_jax.data import augment
from uda_jax.data import builders
from uda_jax.data import class_balance
from uda_jax.data import labels
from uda_jax.data.sampling import EpochSampler
from uda_jax.data.normalization import (
    _BGR_MEANS, IMAGENET_MEAN, IMAGENET_STD, Normalization)
from uda_jax.errors import UserError  # A ValueError whose message main.py prints without a traceback.


def normalize(image: tf.Tensor, normalization: str | Normalization) -> tf.Tensor:
  """RGB image [..., 3] (uint8, or float in 0-255) -> float32 network input."""
  x = tf.cast(image, tf.float32)
  kind = Normalization(normalization)
  if kind in (Normalization.CAFFE_BGR, Normalization.VGG_BGR):
    return x[..., ::-1] - tf.constant(_BGR_MEANS[kind], tf.float32)
  if kind is Normalization.IMAGENET:
    return (x / 255.0 - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)
  return x / 255.0


def denormalize_np(x: np.ndarray, normalization: str | Normalization) -> np.ndarray:
  """Inverse of `normalize` for visualisation: network input [..., 3] -> uint8 RGB."""
  x = np.asarray(x, np.float32)
  kind = Normalization(normalization)
  if kind in (Normalization.CAFFE_BGR, Normalization.VGG_BGR):
    rgb = (x + np.asarray(_BGR_MEANS[kind], np.float32))[..., ::-1]
  elif kind is Normalization.IMAGENET:
    rgb = (x * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)) * 255.0
  else:
    rgb = x * 255.0
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Public iterators.


def train_iterator(
    data_cfg: Any, *, seed: int, start_step: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """Process-local training batches of steps start_step, start_step + 1, ... (forever).

  Yields 'source_image' float32 [b, H, W, 3], 'source_label' int32 [b, H, W] (train ids, 255 ignore) and
  'target_image' float32 [b, H', W', 3], with b = batch_size // process_count: this process's contiguous
  slice of the global batch.
  """
  local = _local_batch(data_cfg.batch_size, process_index, process_count, "batch_size")
  _check_pseudo_labels(data_cfg)
  label_map = _cfg(data_cfg, "source_label_map", "cityscapes_ids_to_19")
  kwargs = dict(seed=seed, start_step=start_step, process_index=process_index, local=local)
  source, source_errors = _train_stream(data_cfg, "source", label_map=label_map, **kwargs)
  target, target_errors = _train_stream(data_cfg, "target", label_map=None, **kwargs)
  ds = tf.data.Dataset.zip(source, target).map(
      lambda s, t: {"source_image": s["image"], "source_label": s["label"], "target_image": t["image"]}
  )
  return _as_numpy(ds.prefetch(tf.data.AUTOTUNE), source_errors + target_errors)


def _train_stream(data_cfg, role, *, seed, start_step, process_index, local, label_map):
  """Batches of one domain ('source' or 'target'); labels only where a label map is given."""
  split_name = _cfg(data_cfg, f"{role}_split", "train")
  split = _open(data_cfg, getattr(data_cfg, role), split_name)
  table = None if label_map is None else _label_table(label_map, f"{role}_label_map")
  size = _size(_cfg(data_cfg, f"{role}_size", None))
  aug = augment.Augment.from_config(_cfg(data_cfg, f"{role}_aug", None), f"data.{role}_aug")
  decode = _Decoder(split, _cfg(data_cfg, "normalization", Normalization.CAFFE_BGR), image_size=size,
                    label_size=size, size_field=f"{role}_size", label_table=table, aug=aug)
  if role == "source" and _cfg(data_cfg, "class_balanced", False):
    presence = class_balance.class_presence(split.records, split.features, table, cache_dir=split.data_dir,
                                            split=split_name, label_map=label_map)
    sampler = class_balance.ClassBalancedSampler(presence, seed, role)
  else:
    sampler = EpochSampler(len(split.records), seed, role)
  offset = process_index * local + np.arange(local)
  positions = lambda step: step * data_cfg.batch_size + offset
  key = _stream_key(seed, role)
  seeds = lambda step: np.stack([np.full(local, key), positions(step)], axis=1)
  records = _records(split, tf.data.Dataset.counter(start_step), lambda step: sampler(positions(step)), local,
                     seeds_of=seeds)
  return records.map(decode, **_PARALLEL).batch(local), decode.errors


def _check_pseudo_labels(data_cfg) -> None:
  """A source of predicted labels (FADA self-distillation) must have been predicted on the target split."""
  from uda_jax import predict  # pylint: disable=g-import-not-at-top
  manifest = predict.read_manifest(data_cfg.source) if data_cfg.source else None
  if manifest is None or manifest.get("folder"):
    return
  made_on = f"{manifest['dataset']}:{manifest['split']}"
  target = f"{data_cfg.target}:{_cfg(data_cfg, 'target_split', 'train')}"
  if made_on != target:
    raise UserError(f"the pseudo-labels in {data_cfg.source} were predicted on {made_on}, but data.target is {target}: "
                    "predict on the target split (--mode=predict) or set data.target to match.")
  n = len(_open(data_cfg, data_cfg.target, _cfg(data_cfg, "target_split", "train")).records)
  if manifest["num_examples"] != n:
    raise UserError(f"{data_cfg.source} holds {manifest['num_examples']} pseudo-labels but {target} has {n} images: "
                    "the target split changed since they were predicted; predict again (--mode=predict).")


def _stream_key(seed: int, role: str) -> int:
  """First half of the augmentation seeds of a role's examples; the second is the stream position."""
  state = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(role.encode())]).generate_state(2, np.uint32)
  return int((int(state[0]) << 31) ^ int(state[1]))  # < 2**63: fits an int64.


def eval_iterator(
    data_cfg: Any, *, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split: 'image' float32 [b, H, W, 3], 'label' int32 [b, Hl, Wl], 'mask' bool [b].

  Global batch i holds examples [i * B, (i + 1) * B) of the split, B = eval_batch_size, and this process gets
  its contiguous slice. The last batch is padded (with example 0) and masked, so that every process yields
  ceil(N / B) batches.
  """
  global_batch = data_cfg.eval_batch_size
  local = _local_batch(global_batch, process_index, process_count, "eval_batch_size")
  split = _open(data_cfg, data_cfg.eval, _cfg(data_cfg, "eval_split", "validation"))
  n = len(split.records)
  if n == 0:
    raise UserError(f"The eval split {split.name} is empty.")
  decode = _Decoder(
      split,
      _cfg(data_cfg, "normalization", Normalization.CAFFE_BGR),
      image_size=_size(_cfg(data_cfg, "eval_size", None)),
      label_size=_size(_cfg(data_cfg, "eval_label_size", None)),
      size_field="eval_size",
      label_size_field="eval_label_size",
      label_table=_label_table(_cfg(data_cfg, "eval_label_map", "cityscapes_ids_to_19"), "eval_label_map"),
      resize=_cfg(data_cfg, "eval_resize", "bicubic"),
  )
  num_batches = -(-n // global_batch)
  positions = np.arange(num_batches)[:, None] * global_batch + process_index * local + np.arange(local)
  masks = positions < n
  indices = np.where(masks, positions, 0)  # Padding repeats example 0; the mask drops it.
  examples = _records(split, tf.data.Dataset.range(num_batches), lambda i: indices[i], local)
  masks = tf.data.Dataset.from_tensor_slices(masks.reshape(-1))
  ds = tf.data.Dataset.zip(examples.map(decode, **_PARALLEL), masks)
  ds = ds.map(lambda ex, mask: {"image": ex["image"], "label": ex["label"], "mask": mask}).batch(local)
  return _as_numpy(ds.prefetch(tf.data.AUTOTUNE), decode.errors)


def num_eval_examples(data_cfg: Any) -> int:
  """Number of (unpadded) examples in the eval split."""
  return len(_open(data_cfg, data_cfg.eval, _cfg(data_cfg, "eval_split", "validation")).records)


# ---------------------------------------------------------------------------------------------------------------
# Reading and decoding.

_PARALLEL = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


@dataclasses.dataclass
class _Split:
  name: str  # 'dataset/config:split', for messages.
  records: Sequence[bytes]  # Random access to serialized tf.train.Examples.
  features: tfds.features.FeaturesDict
  data_dir: str  # Where the prepared files are (derived data like class presence is cached there too).


def open_split(data_cfg, name: str, split: str) -> _Split:
  """A prepared split for random access (records, features); prepares generated datasets if allowed."""
  return _open(data_cfg, name, split)


def _open(data_cfg, name: str, split: str) -> _Split:
  builder = builders.get_builder(name, _cfg(data_cfg, "data_dir", "") or None)
  builders.ensure_prepared(builder, _cfg(data_cfg, "auto_prepare", True))
  if split not in builder.info.splits:
    raise UserError(f"Dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}.")
  records = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  return _Split(f"{name}:{split}", records, builder.info.features, str(builder.data_dir))


def _records(split: _Split, steps: tf.data.Dataset, indices_of, local: int, seeds_of=None) -> tf.data.Dataset:
  """Serialized records of indices_of(step) for each step, flattened to one element per record, in order.

  With seeds_of (step -> int64 [local, 2]), each element is (record, its augmentation seed). Only this lookup
  runs in Python (sequentially, so the sampler needs no lock); decoding follows in graph mode.
  """

  def fetch(step):
    step = int(step)
    records = np.array(split.records.__getitems__(indices_of(step).tolist()), dtype=object)
    return records if seeds_of is None else (records, np.asarray(seeds_of(step), np.int64))

  def fetch_tf(step):
    if seeds_of is None:
      return tf.ensure_shape(tf.numpy_function(fetch, [step], tf.string), [local])
    records, seeds = tf.numpy_function(fetch, [step], (tf.string, tf.int64))
    return tf.ensure_shape(records, [local]), tf.ensure_shape(seeds, [local, 2])

  return steps.map(fetch_tf).unbatch()


class _Decoder:
  """(Serialized example[, seed]) -> {'image': normalised float32 [H, W, 3], 'label': int32 train ids [H, W]}.

  A size of None keeps the native size, which must then be the same for every example: the first record sets
  it, and a differing one stops the iterator with a ValueError naming the config field to set. An active `aug`
  (augment.Augment; training only, label_size == image_size) needs the seed; with a crop the output size is
  fixed, so native sizes may vary.
  """

  def __init__(self, split, normalization, *, image_size, label_size, size_field, label_table,
               label_size_field=None, aug=augment.Augment(), resize="bicubic"):
    if resize not in augment.RESIZE_METHODS:
      raise UserError(f"data.eval_resize={resize!r}: choose one of {', '.join(augment.RESIZE_METHODS)}")
    self.split, self.resize = split, resize
    self.normalization = Normalization(normalization)
    self.image_size, self.label_size = image_size, label_size
    self.aug = aug
    self.table = None if label_table is None else tf.constant(label_table, tf.uint8)
    self.errors = []  # Messages of the size checks, to turn their failures into clear ValueErrors.
    self.crop_check = None
    if aug.crop is not None and aug.crop_margin is not None:  # LSD-seg's unpadded crop: the image must be larger
      message = augment.crop_too_large_message(f"data.{size_field.removesuffix('_size')}_aug", aug, split.name)
      least = tuple(c + aug.crop_margin + 1 for c in aug.crop)
      if image_size is not None and any(n < m for n, m in zip(image_size, least)):
        raise UserError(message)
      if image_size is None:
        self.crop_check = (least, message)
        self.errors.append(message)
    if aug.crop is not None:
      image_size = label_size = aug.crop  # Fixed output: no native size to check.
    first = None
    if image_size is None or (label_table is not None and label_size is None):
      first = split.features.deserialize_example(tf.constant(split.records[0]))
    self.native_image = self._expect(first, "image", image_size, size_field)
    self.native_label = None
    if label_table is not None:
      self.native_label = self._expect(first, "label", label_size, label_size_field or size_field)

  def _expect(self, first, key, size, field):
    if size is not None:
      return None
    shape = tuple(int(d) for d in first[key].shape[:2])
    self.errors.append(
        f"{self.split.name}: {key}s vary in size (the first is {shape[0]}x{shape[1]}); set data.{field} to"
        " resize them to a common size."
    )
    return shape, self.errors[-1]

  def __call__(self, serialized, seed=None):
    decoders = None if self.table is not None else {"label": tfds.decode.SkipDecoding()}
    example = self.split.features.deserialize_example(serialized, decoders=decoders)
    image = _check(example["image"], self.native_image)
    label = None if self.table is None else _check(example["label"], self.native_label)[..., 0]
    if self.crop_check is not None:
      least, message = self.crop_check
      with tf.control_dependencies([tf.debugging.assert_greater_equal(tf.shape(image)[:2], least, message=message)]):
        image = tf.identity(image)
    if self.aug.active:
      image, label = augment.apply(self.aug, image, label, seed, self.image_size)
    else:
      if self.image_size is not None:
        image = augment.resize_image(image, self.image_size, self.resize)
      if label is not None and self.label_size is not None:
        label = augment.resize_label(label, self.label_size)
    out = {"image": normalize(image, self.normalization)}
    if label is not None:
      # Raw ids -> train ids on the final (smaller) grid; crop padding (IGNORE) stays IGNORE, as every table
      # maps 255 to 255.
      out["label"] = tf.cast(tf.gather(self.table, tf.cast(label, tf.int32)), tf.int32)
    return out


def _check(tensor, expected):
  if expected is None:
    return tensor
  shape, message = expected
  with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(tensor)[:2], shape, message=message)]):
    tensor = tf.identity(tensor)
  return tf.ensure_shape(tensor, (*shape, None))


def _as_numpy(ds: tf.data.Dataset, errors: list[str]) -> Iterator[dict[str, np.ndarray]]:
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      for message in errors:
        if message in e.message:
          raise UserError(message) from None
      raise
    yield batch


# ---------------------------------------------------------------------------------------------------------------
# Config helpers.


def _cfg(data_cfg, field, default):
  value = getattr(data_cfg, field, default)
  return default if value is None else value


def _label_table(name, field) -> np.ndarray:
  if name not in labels.LABEL_MAPS:
    raise UserError(f"data.{field}={name!r} is not a label map; choose one of {', '.join(labels.LABEL_MAPS)}.")
  return labels.LABEL_MAPS[name]


def _size(size) -> tuple[int, int] | None:
  if size is None or len(size) == 0:
    return None
  if len(size) != 2:
    raise UserError(f"Sizes are (H, W); got {size!r}.")
  return int(size[0]), int(size[1])


def _local_batch(global_batch: int, process_index: int, process_count: int, field: str) -> int:
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  if global_batch % process_count:
    raise UserError(f"data.{field}={global_batch} is not divisible by the {process_count} processes.")
  return global_batch // process_count
