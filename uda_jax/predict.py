"""--mode=predict: hard predictions of a checkpoint on a dataset split or a folder of images.

Writes into config.predict.output_dir (default WORKDIR/predict_<dataset>_<split> or WORKDIR/predict_<folder>):
  labels/<name>.png       palette PNGs whose pixel values are the train ids, at the image's native size
  confidence/<name>.png   (predict.confidence) 16-bit PNGs of the winning class's probability x 65535
  tfds/                   (dataset splits) a TFDS dataset of the split's images with these labels, which the
                          pipeline reads as a labelled source: --config.data.source=OUTPUT_DIR
  manifest.json           what was predicted, from which checkpoint; written last
FADA's self-distillation trains on such hard pseudo-labels of the target training split (no threshold, as run).
Everything is written to a temporary directory renamed into place at the end, so a killed run leaves no
half-written set; a finished identical set is left as it is, any other content of output_dir is an error.
"""

import dataclasses
import hashlib
import io
import json
import os
import types
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from PIL import Image

from uda_jax import evaluate, files, methods, models, parallel, visualize
from uda_jax.data import augment, labels, pipeline
from uda_jax.errors import UserError
from uda_jax.parallel import AXIS

FORMAT = "uda_jax predictions v1"
TFDS_NAME, TFDS_VERSION = "uda_pseudo_labels", "1.0.0"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class Source:
  """What to predict: a TFDS split (dataset, split) or a folder of images (folder)."""
  dataset: str = ""
  split: str = ""
  folder: str = ""

  def describe(self) -> dict:
    return {"folder": os.path.abspath(self.folder)} if self.folder else {"dataset": self.dataset, "split": self.split}


def source_of(config) -> Source:
  p = config.predict
  if p.input_dir:
    return Source(folder=p.input_dir)
  return Source(dataset=p.dataset or config.data.target, split=p.split or config.data.target_split)


def default_output_dir(workdir: str, source: Source) -> str:
  if source.folder:
    return os.path.join(workdir, f"predict_{os.path.basename(os.path.normpath(source.folder))}")
  return os.path.join(workdir, f"predict_{source.dataset.replace('/', '_')}_{source.split}")


def read_manifest(directory: str) -> dict | None:
  path = os.path.join(directory, "manifest.json")
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def tfds_dir(directory: str) -> str | None:
  """The TFDS dataset inside a prediction directory, if it holds one."""
  manifest = read_manifest(directory)
  return os.path.join(directory, manifest["tfds"]) if manifest and manifest.get("tfds") else None


def run(config, workdir: str, restore) -> str:
  """Predicts with the checkpoint `restore(config, workdir, mesh)` -> (states, step) returns; returns the dir."""
  source = source_of(config)
  out = config.predict.output_dir or default_output_dir(workdir, source)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  items = _folder_items(source.folder) if source.folder else None
  states, step = restore(config, workdir, mesh)
  what = {"format": FORMAT, **source.describe(), "checkpoint": {"workdir": os.path.abspath(workdir), "step": step},
          "num_classes": config.model.num_classes, "size": list(config.data.eval_size or ()),
          "scales": list(config.eval.scales), "flip": bool(config.eval.flip)}
  old = read_manifest(out)
  if old is not None and all(old.get(k) == v for k, v in what.items()):
    logging.info("%s already holds these predictions (%d images); nothing to do", out, old["num_examples"])
    return out
  if tf.io.gfile.exists(out) and tf.io.gfile.listdir(out):
    held = f"predictions of {_describe(old)}" if old else "other files"
    raise UserError(f"predict.output_dir {out} already holds {held}; choose another --config.predict.output_dir "
                    "or remove that directory")

  step_fn = _make_step(config, mesh, methods.headline_segmenter(config, states))
  batches = _folder_batches(config, items) if source.folder else _split_batches(config, source)
  tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
  writer = jax.process_index() == 0
  names, palette = [], labels.full_palette(labels.CLASS_SETS[config.eval.class_set][1]).reshape(-1).tolist()
  try:
    for batch, batch_names, native, size in batches:
      pred, conf = step_fn(parallel.global_batch({"image": batch["image"]}, mesh), tuple(size))
      pred = multihost_utils.process_allgather(pred, tiled=True)
      conf = multihost_utils.process_allgather(conf, tiled=True) if config.predict.confidence else None
      keep = np.flatnonzero(multihost_utils.process_allgather(batch["mask"], tiled=True))
      for i in keep:
        name = batch_names[i]
        names.append(name)
        if writer:
          visualize.save_png(visualize.label_png(_to_size(pred[i], native[i]), palette),
                             os.path.join(tmp, "labels", f"{name}.png"))
          if conf is not None:
            c16 = np.round(_to_size(conf[i], native[i]) * 65535).astype(np.uint16)
            visualize.save_png(Image.fromarray(c16), os.path.join(tmp, "confidence", f"{name}.png"))
    if writer:
      manifest = {**what, "num_examples": len(names), "names_sha1": names_digest(names), "tfds": None}
      if not source.folder:
        manifest["tfds"] = _store_tfds(config, source, tmp, names)
      _write_json(os.path.join(tmp, "manifest.json"), manifest)  # last: its presence marks a complete set
      if tf.io.gfile.exists(out):  # an empty directory (checked above)
        tf.io.gfile.rmtree(out)
      tf.io.gfile.rename(tmp, out)
  finally:
    if writer and tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
  multihost_utils.sync_global_devices("predict done")
  logging.info("wrote %d predictions of %s (checkpoint step %d) to %s", len(names), _describe(what), step, out)
  return out


def names_digest(names) -> str:
  return hashlib.sha1("\n".join(names).encode()).hexdigest()


def _describe(m: dict) -> str:
  return m["folder"] if m.get("folder") else f"{m['dataset']}:{m['split']}"


def _make_step(config, mesh, seg_state):
  """batch, output size -> (uint8 predictions, confidences) at that size; one compiled step per size."""
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  scales, flip = tuple(config.eval.scales), bool(config.eval.flip)
  compiled = {}

  def step(batch, size):
    if size not in compiled:
      def body(image):
        forward = lambda x: models.prediction_logits(seg_state.apply_fn(variables, x, train=False),
                                                     float(config.eval.aux_weight))
        pred, conf = evaluate.predict(forward, image, size, scales, flip, with_confidence=True,
                                      upsample=config.eval.get("upsample", "bilinear"))
        return pred.astype(jnp.uint8), conf
      compiled[size] = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(AXIS),), out_specs=(P(AXIS), P(AXIS))))
    return compiled[size](batch["image"])

  return step


def _split_batches(config, source: Source):
  """(batch, names, native sizes, prediction size) of the whole split, padded like the evaluation. Predictions
  are made at the first image's native size (each official target set has one) and resized if one differs."""
  split = pipeline.open_split(config.data, source.dataset, source.split)
  names, sizes = zip(*(_name_and_size(split, i) for i in range(len(split.records))))
  data = {**config.data.to_dict(), "eval": source.dataset, "eval_split": source.split,
          "eval_label_size": sizes[0], "eval_label_map": "identity"}
  gb = config.data.eval_batch_size
  batches = pipeline.eval_iterator(types.SimpleNamespace(**data), process_index=jax.process_index(),
                                   process_count=jax.process_count())
  for k, batch in enumerate(batches):
    idx = [min(k * gb + j, len(names) - 1) for j in range(gb)]
    yield batch, [names[i] for i in idx], [sizes[i] for i in idx], sizes[0]


def _name_and_size(split, i):
  """A record's name and native (H, W), read from the image header without decoding it."""
  ex = split.features.deserialize_example(tf.constant(split.records[i]),
                                          decoders={"image": tfds.decode.SkipDecoding(),
                                                    "label": tfds.decode.SkipDecoding()})
  w, h = Image.open(io.BytesIO(ex["image"].numpy())).size
  return ex["name"].numpy().decode(), (h, w)


def _folder_items(folder: str) -> list[str]:
  if not tf.io.gfile.isdir(folder):
    raise UserError(f"predict.input_dir {folder!r} is not a directory")
  found = sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in tf.io.gfile.walk(folder)
                 for f in files if f.lower().endswith(IMAGE_SUFFIXES))
  if not found:
    raise UserError(f"predict.input_dir {folder!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
  return found


def _folder_batches(config, items):
  """Images of a folder, normalised and resized like the evaluation input, in padded batches of one native size."""
  gb, size = config.data.eval_batch_size, tuple(config.data.eval_size)
  pending = []

  def flush():
    n = len(pending)
    images = np.stack([p[1] for p in pending] + [pending[0][1]] * (gb - n))
    native = pending[0][2]
    lo, hi = jax.process_index() * gb // jax.process_count(), (jax.process_index() + 1) * gb // jax.process_count()
    mask = np.arange(gb) < n
    batch = {"image": images[lo:hi], "mask": mask[lo:hi]}
    return batch, [os.path.splitext(p[0])[0] for p in pending] + [""] * (gb - n), [native] * gb, native

  for rel in items:
    path = os.path.join(config.predict.input_dir, rel)
    try:
      image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
      raise UserError(f"{path}: not a readable image ({e.message.splitlines()[0]})") from None
    native = tuple(int(d) for d in image.shape[:2])
    if size:
      image = augment.resize_image(image, size, config.data.get("eval_resize", "bicubic"))
    x = pipeline.normalize(image, config.data.normalization).numpy()
    if pending and (len(pending) == gb or pending[0][2] != native):
      yield flush()
      pending = []
    pending.append((rel, x, native))
  if pending:
    yield flush()


def _to_size(a: np.ndarray, size) -> np.ndarray:
  """A prediction made at another size, resized (nearest, as labels are) to the image's native size."""
  return a if tuple(a.shape[:2]) == tuple(size) else visualize.nearest(a, tuple(size))


def _write_json(path: str, obj) -> None:
  files.write_atomic(path, json.dumps(obj, indent=2))


def _store_tfds(config, source: Source, directory: str, names) -> str:
  """The split's images (bytes as stored) with the predicted labels, as a TFDS dataset; returns its path."""
  split = pipeline.open_split(config.data, source.dataset, source.split)

  def examples():
    for i, name in enumerate(names):
      ex = split.features.deserialize_example(tf.constant(split.records[i]),
                                              decoders={"image": tfds.decode.SkipDecoding(),
                                                        "label": tfds.decode.SkipDecoding()})
      with tf.io.gfile.GFile(os.path.join(directory, "labels", f"{name}.png"), "rb") as f:
        label = np.asarray(Image.open(f))[..., None]
      yield name, {"image": io.BytesIO(ex["image"].numpy()), "label": label, "name": name}

  features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                         "label": tfds.features.Image(shape=(None, None, 1)),
                                         "name": tfds.features.Text()})
  builder = tfds.dataset_builders.store_as_tfds_dataset(
      name=TFDS_NAME, version=TFDS_VERSION, features=features, split_datasets={"train": examples()},
      data_dir=os.path.join(directory, "tfds"), file_format="array_record", disable_shuffling=True,
      description=f"Predicted labels of {source.dataset}:{source.split}")
  return os.path.relpath(str(builder.data_dir), directory)

