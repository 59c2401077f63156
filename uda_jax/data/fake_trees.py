"""Synthetic frames written in the datasets' real on-disk formats, for the builder tests and the input benchmark.

The writers produce exactly the files a builder reads from the manual download: 8-bit RGB PNG frames, GTA5's
palette label PNGs and Cityscapes' grayscale labelIds, in each dataset's folder layout. `street_frame` draws a
frame whose PNG costs about what a real render costs to decode (a few MB at 1914x1052): random pixels
compress poorly and decode far slower than real frames, flat colour the opposite.
"""

import concurrent.futures
import os
from pathlib import Path

import numpy as np
from PIL import Image

from uda_jax.data import labels as labels_lib
from uda_jax.data import toy

GTA5_SIZE = (1052, 1914)  # (H, W) of nearly every GTA5 frame.
CITYSCAPES_SIZE = (1024, 2048)
CITYSCAPES_CITIES = ("aachen", "bochum", "bremen", "cologne")


def write_rgb_png(path: Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image, "RGB").save(path)


def write_gray_png(path: Path, ids: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(ids.astype(np.uint8), "L").save(path)


def write_palette_png(path: Path, ids: np.ndarray) -> None:
  """GTA5's label format: mode 'P', pixel values = label ids, palette = their colours."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(ids.astype(np.uint8), "P")
  palette = np.zeros((256, 3), np.uint8)
  for _, label_id, colour in labels_lib.CITYSCAPES19:
    palette[label_id] = colour
  image.putpalette(palette.reshape(-1).tolist())
  image.save(path)
  with Image.open(path) as back:  # The file must really be a palette PNG holding the ids.
    assert back.mode == "P" and np.array_equal(np.asarray(back), ids)


def write_camvid_colour_label(path: Path, ids: np.ndarray) -> None:
  """CamVid's original label format: 8-bit RGB PNG, each pixel the label_colors.txt colour of its class."""
  colours = np.array([colour for _, colour in labels_lib.CAMVID32], np.uint8)
  write_rgb_png(path, colours[ids])


def write_gta5_pair(root: Path, name: str, image: np.ndarray, ids: np.ndarray) -> None:
  """images/NAME.png (RGB) and labels/NAME.png (palette of Cityscapes labelIds)."""
  write_rgb_png(root / "images" / f"{name}.png", image)
  write_palette_png(root / "labels" / f"{name}.png", ids)


def write_cityscapes_pair(root: Path, folder: str, city: str, stem: str, image: np.ndarray,
                          ids: np.ndarray) -> None:
  """leftImg8bit/FOLDER/CITY/STEM_leftImg8bit.png and gtFine/FOLDER/CITY/STEM_gtFine_labelIds.png."""
  write_rgb_png(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png", image)
  write_gray_png(root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png", ids)


def street_frame(index: int, size: tuple[int, int], noise: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
  """(image uint8 [H, W, 3], Cityscapes labelIds uint8 [H, W]) of a render-like street scene.

  The toy's street layout and flat colours (blocky regions with sharp edges), under a lighting gradient, smooth
  blotchy shading and fine per-pixel noise (weaker in the sky). The noise sets the PNG size: 1.2 gives ~2.4 MB
  at 1914x1052, about a real GTA5 frame.
  """
  h, w = size
  flat, ids = toy.generate("source", "train", index, size)
  rng = np.random.default_rng([index, h, w])
  rows = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
  cols = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
  angle = rng.uniform(0, 2 * np.pi)
  light = 1.0 + 0.4 * (np.cos(angle) * cols + np.sin(angle) * rows)
  coarse = rng.standard_normal((max(h // 8, 2), max(w // 8, 2))).astype(np.float32)
  blotches = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC))
  x = flat.astype(np.float32) * light[..., None] + 10.0 * blotches[..., None]
  amplitude = np.where(ids == toy.SKY, 0.3 * noise, noise).astype(np.float32)[..., None]
  x += amplitude * rng.standard_normal((h, w, 3), dtype=np.float32)
  return np.clip(np.round(x), 0, 255).astype(np.uint8), ids


def _write_all(jobs) -> None:
  """Runs the writers in threads: PIL's PNG encoder and numpy release the GIL."""
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for future in [pool.submit(job) for job in jobs]:
      future.result()


def write_gta5_tree(root: Path, n: int, size: tuple[int, int] = GTA5_SIZE) -> list[Path]:
  """n GTA5 pairs 00001 ... in `root`; returns the image paths."""
  names = [f"{i:05d}" for i in range(1, n + 1)]
  _write_all(lambda i=i, name=name: write_gta5_pair(root, name, *street_frame(i, size))
             for i, name in enumerate(names))
  return [root / "images" / f"{name}.png" for name in names]


def write_cityscapes_tree(root: Path, n: int, size: tuple[int, int] = CITYSCAPES_SIZE,
                          num_val: int = 1) -> list[Path]:
  """n train frames spread over a few cities and num_val val frames (the builder needs both splits).

  Returns the train image paths. Frame contents differ from write_gta5_tree's (different indices).
  """
  jobs, paths = [], []
  for split, folder, count, offset in (("train", "train", n, 100_000), ("val", "val", num_val, 200_000)):
    for i in range(count):
      city = CITYSCAPES_CITIES[i % len(CITYSCAPES_CITIES)] if split == "train" else "lindau"
      stem = f"{city}_000000_{i:06d}"
      jobs.append(lambda folder=folder, city=city, stem=stem, i=i + offset: write_cityscapes_pair(
          root, folder, city, stem, *street_frame(i, size)))
      if split == "train":
        paths.append(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png")
  _write_all(jobs)
  return paths
