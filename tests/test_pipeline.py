"""Input pipelines over tiny toy datasets prepared in a temporary data_dir."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from uda_jax.data import builders
from uda_jax.data import labels
from uda_jax.data import pipeline
from uda_jax.data import toy
from uda_jax.data.builders import uda_toy

# Odd sizes: batches straddle epochs, and the eval split does not fill its last batch.
SIZES = {"source": {"train": 13, "validation": 3}, "target": {"train": 11, "validation": 7}}
TABLE = labels.LABEL_MAPS["cityscapes_ids_to_19"]


class UdaJaxTestManual(tfds.core.GeneratorBasedBuilder):
  """A dataset that needs files downloaded by hand; it must never get prepared here."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the original archives in manual_dir."

  def _info(self):
    # Not dataset_info_from_configs: that reads metadata files next to a package module, and this is a test.
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    raise AssertionError("A manual dataset must not be prepared automatically.")

  def _generate_examples(self):
    yield from ()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(uda_toy, "SPLIT_SIZES", SIZES)
    for name in ("uda_toy/source", "uda_toy/target"):
      builders.ensure_prepared(builders.get_builder(name, str(path)), auto_prepare=True)
  return str(path)


def make_cfg(data_dir, **overrides):
  cfg = ml_collections.ConfigDict(dict(
      data_dir=data_dir, source="uda_toy/source", source_split="train", target="uda_toy/target",
      target_split="train", eval="uda_toy/target", eval_split="validation",
      source_label_map="cityscapes_ids_to_19", eval_label_map="cityscapes_ids_to_19",
      source_size=None, target_size=(48, 96), eval_size=(48, 96), eval_label_size=None,
      normalization="caffe_bgr", batch_size=4, eval_batch_size=4, auto_prepare=True,
  ))
  cfg.update(overrides)
  return cfg


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_are_a_function_of_seed_and_step(data_dir):
  cfg = make_cfg(data_dir)
  run = take(pipeline.train_iterator(cfg, seed=3, start_step=0), 7)
  assert_batches_equal(run, take(pipeline.train_iterator(cfg, seed=3, start_step=0), 7))
  assert_batches_equal(run[4:], take(pipeline.train_iterator(cfg, seed=3, start_step=4), 3))
  other_seed = take(pipeline.train_iterator(cfg, seed=4, start_step=0), 1)[0]
  assert not np.array_equal(other_seed["source_label"], run[0]["source_label"])

  batch = run[0]
  assert batch["source_image"].shape == (4, *toy.DEFAULT_SIZE, 3) and batch["source_image"].dtype == np.float32
  assert batch["source_label"].shape == (4, *toy.DEFAULT_SIZE) and batch["source_label"].dtype == np.int32
  assert batch["target_image"].shape == (4, 48, 96, 3) and batch["target_image"].dtype == np.float32


def test_train_batches_hold_the_sampled_examples(data_dir):
  cfg = make_cfg(data_dir, target_size=None, batch_size=5)
  source = pipeline.EpochSampler(SIZES["source"]["train"], seed=11, stream="source")
  target = pipeline.EpochSampler(SIZES["target"]["train"], seed=11, stream="target")
  # Every epoch visits each example once, and the two roles are shuffled differently.
  assert sorted(source(np.arange(13, 26))) == list(range(13))
  assert not np.array_equal(source(np.arange(11)), target(np.arange(11)))

  for step, batch in enumerate(take(pipeline.train_iterator(cfg, seed=11, start_step=0), 3)):
    positions = step * 5 + np.arange(5)
    for i, (s, t) in enumerate(zip(source(positions), target(positions))):
      image, raw = toy.generate("source", "train", s)
      np.testing.assert_array_equal(batch["source_label"][i], TABLE[raw])
      assert (batch["source_label"][i][raw == toy.ROAD] == 0).all()  # road: labelId 7 -> train id 0.
      assert (batch["source_label"][i][raw == toy.UNLABELED] == 255).all()  # Not in the table: ignored.
      r, g, b = image[10, 20].astype(np.float64)
      np.testing.assert_allclose(
          batch["source_image"][i, 10, 20], [b - 104.00698793, g - 116.66876762, r - 122.67891434], atol=1e-4)
      target_image = toy.generate("target", "train", t)[0]
      np.testing.assert_allclose(pipeline.denormalize_np(batch["target_image"][i], "caffe_bgr"), target_image)


def test_process_slices_concatenate_to_the_global_batch(data_dir):
  cfg = make_cfg(data_dir, batch_size=6)
  whole = take(pipeline.train_iterator(cfg, seed=5, start_step=2), 3)
  parts = [take(pipeline.train_iterator(cfg, seed=5, start_step=2, process_index=p, process_count=2), 3)
           for p in range(2)]
  for step in range(3):
    for key in whole[step]:
      assert parts[0][step][key].shape[0] == 3
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key], err_msg=key)
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_iterator(cfg, seed=5, start_step=0, process_index=0, process_count=4)


def test_resized_labels_only_hold_mapped_ids(data_dir):
  cfg = make_cfg(data_dir, source_size=(40, 80), batch_size=8)
  batch = next(pipeline.train_iterator(cfg, seed=0, start_step=0))
  assert batch["source_image"].shape == (8, 40, 80, 3) and batch["source_label"].shape == (8, 40, 80)
  assert set(np.unique(batch["source_label"])) <= set(TABLE[[toy.UNLABELED, *toy.CLASS_IDS]].tolist())
  # Nearest-neighbour resizing keeps class proportions (no blending into other ids).
  raw = np.stack([toy.generate("source", "train", i)[1] for i in range(13)])
  road_native = (raw == toy.ROAD).mean()
  road_resized = (batch["source_label"] == 0).mean()
  assert abs(road_native - road_resized) < 0.08


@pytest.mark.parametrize("kind", ["caffe_bgr", "imagenet", "unit"])
def test_normalization_by_hand(kind):
  pixel = np.array([[[10, 200, 30]]], np.uint8)
  got = pipeline.normalize(tf.constant(pixel), kind).numpy()[0, 0]
  expected = {
      "caffe_bgr": [30 - 104.00698793, 200 - 116.66876762, 10 - 122.67891434],
      "imagenet": [(10 / 255 - 0.485) / 0.229, (200 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225],
      "unit": [10 / 255, 200 / 255, 30 / 255],
  }[kind]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(pipeline.denormalize_np(got, kind), pixel[0, 0])
  assert pipeline.Normalization(kind) == kind


def test_eval_pads_masks_and_shards(data_dir):
  cfg = make_cfg(data_dir, eval_batch_size=4)
  assert pipeline.num_eval_examples(cfg) == 7
  whole = list(pipeline.eval_iterator(cfg))
  assert [b["mask"].tolist() for b in whole] == [[True] * 4, [True, True, True, False]]
  parts = [list(pipeline.eval_iterator(cfg, process_index=p, process_count=2)) for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)  # Every process runs the same number of steps.
  for i, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([parts[0][i][key], parts[1][i][key]]), batch[key])
  images = np.concatenate([b["image"] for b in whole])
  label_maps = np.concatenate([b["label"] for b in whole])
  assert images.shape == (8, 48, 96, 3) and label_maps.shape == (8, *toy.DEFAULT_SIZE)
  assert label_maps.dtype == np.int32 and images.dtype == np.float32
  for index in range(7):  # The eval split in order; labels at native size.
    np.testing.assert_array_equal(label_maps[index], TABLE[toy.generate("target", "validation", index)[1]])

  small = next(pipeline.eval_iterator(make_cfg(data_dir, eval_label_size=(24, 48), eval_size=None)))
  assert small["label"].shape == (4, 24, 48) and small["image"].shape == (4, *toy.DEFAULT_SIZE, 3)


def test_varying_native_sizes_need_a_size(tmp_path, monkeypatch):
  generate = toy.generate
  monkeypatch.setattr(toy, "generate", lambda d, s, i, size: generate(d, s, i, (40, 80) if i % 2 else (48, 96)))
  monkeypatch.setattr(uda_toy, "SPLIT_SIZES", {"target": {"train": 1, "validation": 3}})
  builders.ensure_prepared(builders.get_builder("uda_toy/target", str(tmp_path)), auto_prepare=True)
  with pytest.raises(ValueError, match="set data.eval_size"):
    next(pipeline.eval_iterator(make_cfg(str(tmp_path), eval_size=None)))
  with pytest.raises(ValueError, match="set data.eval_label_size"):
    next(pipeline.eval_iterator(make_cfg(str(tmp_path), eval_size=(32, 64), eval_label_size=None)))
  batch = next(pipeline.eval_iterator(make_cfg(str(tmp_path), eval_size=(32, 64), eval_label_size=(32, 64))))
  assert batch["image"].shape == (4, 32, 64, 3) and batch["mask"].tolist() == [True, True, True, False]


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_unprepared_data_dir_gives_a_clear_error(tmp_path, state):
  path = tmp_path / "tfds"
  if state == "empty":
    path.mkdir()
  builder = builders.get_builder("uda_toy/source", str(path))
  with pytest.raises(builders.DatasetNotPreparedError) as error:
    builders.ensure_prepared(builder, auto_prepare=False)
  message = str(error.value)
  assert "uda_toy/source" in message and str(path) in message
  assert ("does not exist" if state == "missing" else "is empty") in message
  assert f"python -m uda_jax.data.prepare uda_toy/source --data_dir {path}" in message
  with pytest.raises(builders.DatasetNotPreparedError, match="uda_toy/target"):
    pipeline.num_eval_examples(make_cfg(str(path), auto_prepare=False))


def test_manual_dataset_is_never_prepared_automatically(tmp_path):
  assert issubclass(builders.DatasetNotPreparedError, ValueError)
  with pytest.raises(builders.DatasetNotPreparedError) as error:
    builders.ensure_prepared(builders.get_builder("uda_jax_test_manual", str(tmp_path)), auto_prepare=True)
  message = str(error.value)
  assert "uda_jax_test_manual" in message and str(tmp_path) in message
  assert f"python -m uda_jax.data.prepare uda_jax_test_manual --manual_dir DIR --data_dir {tmp_path}" in message
  with pytest.raises(builders.DatasetNotPreparedError, match="uda_jax_test_manual"):
    pipeline.train_iterator(make_cfg(str(tmp_path), source="uda_jax_test_manual"), seed=0, start_step=0)
  with pytest.raises(ValueError, match="Unknown dataset"):
    builders.get_builder("no_such_dataset_xyz", str(tmp_path))
