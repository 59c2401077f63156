"""Training augmentations (augment.py), class-balanced sampling (class_balance.py) and their pipeline wiring."""

import colorsys
import glob
import itertools
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from uda_jax.data import augment
from uda_jax.data import class_balance
from uda_jax.data import labels
from uda_jax.data import pipeline
from uda_jax.data import toy
from uda_jax.data.builders import uda_toy
from uda_jax.errors import UserError

import test_pipeline

TABLE = labels.LABEL_MAPS["cityscapes_ids_to_19"]
FADA_JITTER = (0.5, 0.5, 0.5, 0.2)


def seed(p, key=7):
  return tf.constant([key, p], tf.int64)


def coded_example(rng, shape=(30, 42), block=6):
  """A label of random blocks and an image whose red channel encodes it (blue is constant)."""
  blocks = rng.integers(0, 19, (shape[0] // block + 1, shape[1] // block + 1))
  label = np.kron(blocks, np.ones((block, block), np.int64))[:shape[0], :shape[1]].astype(np.uint8)
  image = np.stack([label * 12 + 10, 255 - label * 12, np.full(shape, 128)], -1).astype(np.uint8)
  return image, label


# ---------------------------------------------------------------------------------------------------------------
# Geometry.


def test_scale_crop_flip_keep_image_and_label_aligned():
  image, label = coded_example(np.random.default_rng(0), (40, 60), block=10)
  aug = augment.Augment(scale=(0.5, 1.5), crop=(36, 48), flip=0.5)
  padded_any = checked = 0
  for p in range(12):
    out, lab = (t.numpy() for t in augment.apply(aug, image, label, seed(p)))
    assert out.shape == (36, 48, 3) and lab.shape == (36, 48) and lab.dtype == np.uint8
    pad = lab == 255
    padded_any += pad.any()
    np.testing.assert_array_equal(out[pad], 0)  # Padding is black before normalisation ...
    np.testing.assert_allclose(out[~pad][:, 2], 128, atol=1e-3)  # ... and only padding is.
    # Away from block edges (where bicubic blends colours; beyond the crop they are unseen, hence the 254
    # border), the colour still encodes the label.
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(lab, 2, constant_values=254), (5, 5))
    interior = (windows == lab[..., None, None]).all(axis=(-1, -2)) & ~pad
    np.testing.assert_allclose(out[interior][:, 0], lab[interior] * 12.0 + 10, atol=2.0)  # Ids are 12 apart.
    checked += interior.sum()
  assert padded_any and checked > 12 * 36 * 48 * 0.15


def test_crop_without_scaling_is_a_window_of_the_padded_image():
  rng = np.random.default_rng(1)
  image = rng.integers(1, 256, (10, 30, 3)).astype(np.uint8)
  label = rng.integers(0, 19, (10, 30)).astype(np.uint8)
  # FADA pads a short side at both ends by its deficit (6 rows), so a 16-row crop starts at rows 0 ... 6.
  padded_image = np.pad(image, ((6, 6), (0, 0), (0, 0)))
  padded_label = np.pad(label, ((6, 6), (0, 0)), constant_values=255)
  offsets = set()
  for p in range(40):
    out, lab = augment.random_crop_with_pad(tf.constant(image, tf.float32), tf.constant(label), seed(p), (16, 20))
    found = [(i, j) for i in range(7) for j in range(11) if np.array_equal(padded_label[i:i + 16, j:j + 20], lab)
             and np.array_equal(padded_image[i:i + 16, j:j + 20], out)]
    assert found, p
    offsets.add(found[0])
  assert {i for i, _ in offsets} >= {0, 6} and len({j for _, j in offsets}) > 5  # Offsets spread out.


def test_random_scale_draws_the_factor_from_its_range():
  image = np.zeros((20, 30, 3), np.uint8)
  label = np.zeros((20, 30), np.uint8)
  factors = []
  for p in range(10):
    s = float(augment.sample_scale(seed(p), (0.5, 1.5)))
    out, lab = augment.random_scale(image, label, seed(p), (0.5, 1.5))
    assert out.shape == (int(20 * s), int(30 * s), 3) and lab.shape == out.shape[:2]
    out, _ = augment.random_scale(image, None, seed(p), (0.5, 1.5), size=(40, 60))  # Relative to a base size.
    assert out.shape == (int(40 * s), int(60 * s), 3)
    factors.append(s)
  assert 0.5 <= min(factors) and max(factors) < 1.5 and max(factors) - min(factors) > 0.3


def test_flip_moves_image_and_label_together():
  image, label = coded_example(np.random.default_rng(2), (8, 12), block=2)
  flips = {}
  for p_flip in (0.0, 0.5, 1.0):
    flips[p_flip] = []
    for p in range(16):
      out, lab = (t.numpy() for t in augment.random_flip(image, label, seed(p), p_flip))
      flipped = np.array_equal(lab, label[:, ::-1])
      assert flipped or np.array_equal(lab, label)
      np.testing.assert_array_equal(out, image[:, ::-1] if flipped else image)
      flips[p_flip].append(flipped)
  assert not any(flips[0.0]) and all(flips[1.0]) and 0 < sum(flips[0.5]) < 16


# ---------------------------------------------------------------------------------------------------------------
# Colour.


def gray_np(x):
  return x @ np.array([0.299, 0.587, 0.114])


COLOR_OPS_NP = (
    lambda x, f: np.clip(x * f, 0, 255),
    lambda x, f: np.clip(f * x + (1 - f) * gray_np(x).mean(), 0, 255),
    lambda x, f: np.clip(f * x + (1 - f) * gray_np(x)[..., None], 0, 255),
)


def test_color_ops_by_hand():
  x = np.random.default_rng(3).uniform(0, 255, (4, 5, 3)).astype(np.float32)
  for k, f in ((0, 1.3), (1, 0.6), (1, 1.4), (2, 1.4), (2, 0.5)):
    np.testing.assert_allclose(augment.COLOR_OPS[k](x, f).numpy(), COLOR_OPS_NP[k](x, f), atol=1e-3)
  np.testing.assert_allclose(augment.adjust_hue(x, 0.0).numpy(), x, atol=1e-2)  # Shift 0 keeps the hue.
  shifted = augment.adjust_hue(x, 0.1).numpy()
  for pixel, got in zip(x.reshape(-1, 3) / 255, shifted.reshape(-1, 3) / 255):
    h, s, v = colorsys.rgb_to_hsv(*pixel)
    np.testing.assert_allclose(got, colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v), atol=2e-3)


def test_color_jitter_applies_torchvision_factors_in_a_random_order():
  x = np.random.default_rng(4).uniform(0, 255, (6, 7, 3)).astype(np.float32)
  np.testing.assert_array_equal(augment.color_jitter(x, seed(0), (0.0,) * 4).numpy(), x)  # Zero strength.
  orders = set()
  for p in range(12):
    order, factors = (t.numpy() for t in augment.jitter_params(seed(p), (0.5, 0.5, 0.5, 0.0)))
    assert sorted(order) == [0, 1, 2, 3] and all(0.5 <= f <= 1.5 for f in factors[:3]) and factors[3] == 0
    expected = x.astype(np.float64)
    for k in order:
      if k < 3:  # Hue has strength 0 here: skipped.
        expected = COLOR_OPS_NP[k](expected, factors[k])
    np.testing.assert_allclose(augment.color_jitter(x, seed(p), (0.5, 0.5, 0.5, 0.0)).numpy(), expected, atol=1e-2)
    orders.add(tuple(order))
  assert len(orders) > 3
  # Brightness alone multiplies every (unclipped) pixel by one factor in [0.5, 1.5].
  ratio = augment.color_jitter(x / 2, seed(5), (0.5, 0.0, 0.0, 0.0)).numpy() / (x / 2)
  assert 0.5 <= ratio.min() and np.ptp(ratio) < 1e-4 and ratio.max() <= 1.5
  hue = [float(augment.jitter_params(seed(p), FADA_JITTER)[1][3]) for p in range(20)]
  assert -0.2 <= min(hue) < 0 < max(hue) <= 0.2


# ---------------------------------------------------------------------------------------------------------------
# Determinism and config.


def test_augmentation_is_a_function_of_the_seed():
  image, label = coded_example(np.random.default_rng(5))
  aug = augment.Augment(scale=(0.5, 1.5), crop=(20, 20), flip=0.5, jitter=FADA_JITTER)
  run = lambda p, key=7: [t.numpy() for t in augment.apply(aug, image, label, seed(p, key))]
  first = run(3)
  for a, b in zip(first, run(3)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[1], run(4)[1]) and not np.array_equal(first[1], run(3, key=8)[1])


def test_augment_config():
  off = augment.Augment.from_config(None, "data.source_aug")
  assert off == augment.Augment() and not off.active
  cfg = ml_collections.ConfigDict(dict(scale=(0.5, 1.5), crop=(512, 1024), flip=0.5, jitter=FADA_JITTER,
                                       pad_image=0.0))
  on = augment.Augment.from_config(cfg, "data.source_aug")
  assert on.active and on.crop == (512, 1024) and on.scale == (0.5, 1.5)
  bad = {"scale without crop": dict(crop=()), "scale order": dict(scale=(1.5, 0.5)), "flip": dict(flip=2.0),
         "hue": dict(jitter=(0, 0, 0, 0.7)), "crop": dict(crop=(10,)), "pad": dict(pad_image=300)}
  for name, override in bad.items():
    with pytest.raises(UserError, match="data.source_aug"):
      augment.Augment.from_config(ml_collections.ConfigDict({**cfg.to_dict(), **override}), "data.source_aug")


# ---------------------------------------------------------------------------------------------------------------
# Class-balanced sampling.


def rare_class_presence(n=500):
  """Class 0 in every image, class 1 in 1% of them, class 2 in none."""
  presence = np.zeros((n, 3), bool)
  presence[:, 0] = True
  presence[:: n // 5, 1] = True
  return presence


def test_class_balanced_sampler_favours_rare_classes():
  presence = rare_class_presence()
  sampler = class_balance.ClassBalancedSampler(presence, seed=1, stream="source")
  draws = sampler(np.arange(class_balance.SUB_EPOCH))
  assert presence[draws].any(axis=1).all() and presence[draws, 1].mean() > 0.2  # Uniform would give ~1%.
  again = class_balance.ClassBalancedSampler(presence, seed=1, stream="source")(np.arange(100))
  np.testing.assert_array_equal(draws[:100], again)
  other = class_balance.ClassBalancedSampler(presence, seed=2, stream="source")(np.arange(100))
  assert not np.array_equal(draws[:100], other)
  with pytest.raises(UserError, match="no image contains any class"):
    class_balance.ClassBalancedSampler(np.zeros((4, 3), bool), seed=0, stream="source")


def test_class_balanced_sampler_random_access_equals_sequential():
  presence = np.random.default_rng(6).random((50, 5)) < [0.9, 0.5, 0.1, 0.05, 0.0]
  sequential = class_balance.ClassBalancedSampler(presence, 3, "source", sub_epoch=40)
  stream = np.concatenate([sequential(np.arange(s * 7, s * 7 + 7)) for s in range(30)])  # Batches straddle.
  fresh = class_balance.ClassBalancedSampler(presence, 3, "source", sub_epoch=40)
  np.testing.assert_array_equal(fresh(np.arange(150, 210)), stream[150:])
  assert not presence[stream, 4].any() and presence[stream].any(axis=1).all()
  assert class_balance.num_classes(TABLE) == 19
  assert class_balance.num_classes(labels.LABEL_MAPS["synthia_ids_to_16"]) == 16


def test_class_presence_of_the_toy_split_is_cached(toy_data_dir, tmp_path, monkeypatch):
  split = pipeline._open(make_cfg(toy_data_dir), "uda_toy/source", "train")
  n = len(split.records)
  expected = np.zeros((n, 19), bool)
  for i in range(n):
    ids = TABLE[toy.generate("source", "train", i)[1]]
    expected[i, ids[ids < 19]] = True
  kwargs = dict(split="train", label_map="cityscapes_ids_to_19")
  presence = class_balance.class_presence(split.records, split.features, TABLE, cache_dir=split.data_dir, **kwargs)
  np.testing.assert_array_equal(presence, expected)
  assert len(glob.glob(os.path.join(split.data_dir, "class_presence_train_cityscapes_ids_to_19_*.npy"))) == 1
  assert not glob.glob(os.path.join(split.data_dir, "*.tmp-*"))

  def no_pass(*args):
    raise AssertionError("the cache should have been used")

  monkeypatch.setattr(class_balance, "_raw_presence", no_pass)
  cached = class_balance.class_presence(split.records, split.features, TABLE, cache_dir=split.data_dir, **kwargs)
  np.testing.assert_array_equal(cached, expected)
  monkeypatch.undo()
  (tmp_path / "a_file").write_text("")  # A cache dir that cannot be created: computed and kept in memory.
  unwritable = str(tmp_path / "a_file" / "sub")
  got = class_balance.class_presence(
      [split.records[i] for i in range(5)], split.features, TABLE, cache_dir=unwritable, **kwargs)
  np.testing.assert_array_equal(got, expected[:5])


# ---------------------------------------------------------------------------------------------------------------
# The pipeline with augmentation and class balance on.


def make_cfg(data_dir, **overrides):
  """test_pipeline's config with augmentation on both roles and class-balanced source sampling."""
  aug = dict(source_aug=dict(scale=(0.5, 1.5), crop=(40, 64), flip=0.5, jitter=FADA_JITTER, pad_image=0.0),
             target_aug=dict(scale=(0.5, 1.0), crop=(32, 80), flip=0.5, jitter=(0.0,) * 4, pad_image=0.0),
             class_balanced=True)
  return test_pipeline.make_cfg(data_dir, **{**aug, **overrides})


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def test_train_iterator_augments_exactly_and_resumably(toy_data_dir):
  cfg = make_cfg(toy_data_dir)
  run = take(pipeline.train_iterator(cfg, seed=3, start_step=0), 4)
  batch = run[0]
  assert batch["source_image"].shape == (4, 40, 64, 3) and batch["source_label"].shape == (4, 40, 64)
  assert batch["target_image"].shape == (4, 32, 80, 3)
  train_ids = set(TABLE[list(toy.CLASS_IDS)].tolist()) | {255}
  assert set(np.unique([b["source_label"] for b in run]).tolist()) <= train_ids
  # Target scaled relative to target_size (48x96) by <= 1: its 80 columns need padding (black) sometimes.
  black = pipeline.normalize(tf.zeros([3]), "caffe_bgr").numpy()
  assert any(np.isclose(b["target_image"], black, atol=1e-4).all(-1).any() for b in run)

  resumed = take(pipeline.train_iterator(cfg, seed=3, start_step=2), 2)
  parts = [take(pipeline.train_iterator(cfg, seed=3, start_step=2, process_index=p, process_count=2), 2)
           for p in range(2)]
  for step in range(2):
    for key, value in run[2 + step].items():
      np.testing.assert_array_equal(resumed[step][key], value, err_msg=key)
      np.testing.assert_array_equal(np.concatenate([parts[0][step][key], parts[1][step][key]]), value, err_msg=key)
  assert not np.array_equal(take(pipeline.train_iterator(cfg, seed=4, start_step=0), 1)[0]["source_label"],
                            batch["source_label"])


def test_crops_need_no_common_native_size(tmp_path, monkeypatch):
  generate = toy.generate
  monkeypatch.setattr(toy, "generate", lambda d, s, i, size: generate(d, s, i, (40, 80) if i % 2 else (48, 96)))
  monkeypatch.setattr(uda_toy, "SPLIT_SIZES", {d: {"train": 3, "validation": 1} for d in ("source", "target")})
  cfg = make_cfg(str(tmp_path), target_size=None, class_balanced=False)
  batch = next(pipeline.train_iterator(cfg, seed=0, start_step=0))
  assert batch["source_image"].shape == (4, 40, 64, 3) and batch["target_image"].shape == (4, 32, 80, 3)
  cfg.source_aug = None  # Without a crop the native sizes must agree.
  with pytest.raises(UserError, match="set data.source_size"):
    take(pipeline.train_iterator(cfg, seed=0, start_step=0), 2)
