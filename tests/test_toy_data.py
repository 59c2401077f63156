"""The procedural toy domain pair and its TFDS builder."""

import numpy as np
import pytest

from uda_jax.data import labels
from uda_jax.data import toy


def _stack(domain, split, count, size=toy.DEFAULT_SIZE):
  images, label_maps = zip(*(toy.generate(domain, split, i, size) for i in range(count)))
  return np.stack(images), np.stack(label_maps)


def test_generation_is_a_pure_function_of_domain_split_index():
  for domain in toy.DOMAINS:
    image, label = toy.generate(domain, "train", 7)
    again_image, again_label = toy.generate(domain, "train", 7)
    assert image.tobytes() == again_image.tobytes() and label.tobytes() == again_label.tobytes()
    assert image.shape == (*toy.DEFAULT_SIZE, 3) and image.dtype == np.uint8
    assert label.shape == toy.DEFAULT_SIZE and label.dtype == np.uint8
    assert toy.generate(domain, "train", 8)[0].tobytes() != image.tobytes()
    assert toy.generate(domain, "validation", 7)[0].tobytes() != image.tobytes()
  # Same index, other domain: another scene, not a re-rendering of the same one.
  assert toy.generate("source", "train", 7)[1].tobytes() != toy.generate("target", "train", 7)[1].tobytes()


def test_size_is_a_parameter():
  image, label = toy.generate("target", "train", 0, size=(40, 72))
  assert image.shape == (40, 72, 3) and label.shape == (40, 72)


def test_every_class_occurs_and_maps_to_a_train_id():
  table = labels.LABEL_MAPS["cityscapes_ids_to_19"]
  assert len(toy.CLASS_IDS) >= 8
  assert all(table[c] != labels.IGNORE for c in toy.CLASS_IDS)
  assert table[toy.UNLABELED] == labels.IGNORE
  for domain in toy.DOMAINS:
    _, label_maps = _stack(domain, "train", 60)
    present = set(np.unique(label_maps).tolist())
    assert set(toy.CLASS_IDS) <= present, (domain, set(toy.CLASS_IDS) - present)
    assert present <= set(toy.CLASS_IDS) | {toy.UNLABELED}


def test_layout_prior_sky_on_top_road_at_the_bottom():
  for domain in toy.DOMAINS:
    _, label_maps = _stack(domain, "train", 40)
    rows = np.arange(label_maps.shape[1])[None, :, None]
    mean_row = lambda c: (rows * (label_maps == c)).sum() / (label_maps == c).sum()
    assert mean_row(toy.SKY) < mean_row(toy.BUILDING) < mean_row(toy.SIDEWALK)
    assert mean_row(toy.SKY) < mean_row(toy.ROAD)
    # Per image: the sky's lowest pixel is above the road's highest.
    for label in label_maps:
      sky_rows, road_rows = np.nonzero(label == toy.SKY)[0], np.nonzero(label == toy.ROAD)[0]
      assert sky_rows.max() < road_rows.min()
    # The bottom row is street (road, sidewalk, terrain or objects on it), never sky.
    assert not (label_maps[:, -1] == toy.SKY).any()


def _nearest_mean_classifier(images, label_maps):
  classes = np.array(toy.CLASS_IDS)
  pixels, targets = images.reshape(-1, 3).astype(np.float32), label_maps.reshape(-1)
  means = np.stack([pixels[targets == c].mean(0) for c in classes])
  return lambda x: classes[((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]


def _accuracy(classify, images, label_maps):
  pixels, targets = images.reshape(-1, 3).astype(np.float32), label_maps.reshape(-1)
  keep = targets != toy.UNLABELED
  return (classify(pixels[keep]) == targets[keep]).mean()


def test_domain_shift_is_real():
  source = _stack("source", "train", 30)
  target_train = _stack("target", "train", 30)
  target_eval = _stack("target", "validation", 30)
  source_to_target = _accuracy(_nearest_mean_classifier(*source), *target_eval)
  target_to_target = _accuracy(_nearest_mean_classifier(*target_train), *target_eval)
  source_to_source = _accuracy(_nearest_mean_classifier(*source), *_stack("source", "validation", 30))
  print(f"colour classifier accuracy: source->target {source_to_target:.3f},"
        f" target->target {target_to_target:.3f}, source->source {source_to_source:.3f}")
  assert target_to_target - source_to_target > 0.2
  assert source_to_source > target_to_target  # The synthetic look is the easy one.
  # Labels are alike in distribution: class frequencies differ by a few points at most.
  freq = lambda m: np.array([(m == c).mean() for c in toy.CLASS_IDS])
  assert np.abs(freq(source[1]) - freq(target_train[1])).max() < 0.05


@pytest.fixture
def tiny_sizes(monkeypatch):
  from uda_jax.data.builders import uda_toy
  sizes = {"source": {"train": 5, "validation": 3}, "target": {"train": 4, "validation": 6}}
  monkeypatch.setattr(uda_toy, "SPLIT_SIZES", sizes)
  return sizes


def test_builder_writes_array_record_with_the_generated_examples(tmp_path, tiny_sizes):
  import tensorflow_datasets as tfds
  from uda_jax.data import builders

  builder = builders.ensure_prepared(builders.get_builder("uda_toy/target", str(tmp_path)), auto_prepare=True)
  assert builder.is_prepared() and builder.version == "1.0.0"
  assert builder.info.file_format.value == "array_record"
  assert list((tmp_path / "uda_toy" / "target" / "1.0.0").glob("*.array_record-*"))
  features = builder.info.features
  assert set(features.keys()) == {"image", "label", "name"}
  assert features["image"].shape == (None, None, 3) and features["label"].shape == (None, None, 1)
  assert {s: builder.info.splits[s].num_examples for s in toy.SPLITS} == tiny_sizes["target"]

  records = builder.as_data_source("validation")
  for index in (0, 5):
    image, label = toy.generate("target", "validation", index)
    example = records[index]  # Shuffling is disabled: record i is example i.
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"][..., 0], label)
    assert example["name"].decode() == f"target_validation_{index:05d}"
  assert isinstance(builder, tfds.core.GeneratorBasedBuilder)
  assert not builder.MANUAL_DOWNLOAD_INSTRUCTIONS
