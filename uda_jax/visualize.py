"""Colourised predictions of the first evaluation images: palette PNGs at label resolution on disk, and
image | ground truth | prediction panels on disk and in TensorBoard; heat maps of what a scheme weights by
(the pixel-wise weighted scheme's GenMap, DisMap and their product) beside them."""

import io
import os

import numpy as np
from PIL import Image

from uda_jax import files
from uda_jax.data import labels, pipeline


def nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of [H, W, ...] to size (h, w), as the labels are resized."""
  rows = (np.arange(size[0]) * array.shape[0]) // size[0]
  cols = (np.arange(size[1]) * array.shape[1]) // size[1]
  return array[rows][:, cols]


def panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: np.ndarray, normalization) -> np.ndarray:
  """uint8 [h, 3w, 3]: the input image, the colourised ground truth and the prediction at the input size."""
  rgb = pipeline.denormalize_np(image, normalization)
  size = rgb.shape[:2]
  gt = labels.colorize(nearest(label, size), palette)
  out = labels.colorize(nearest(pred, size), palette)
  return np.concatenate([rgb, gt, out], axis=1)


def write_predictions(directory: str, samples, palette: np.ndarray, normalization) -> np.ndarray:
  """Writes <k>_pred.png (palette PNG at label resolution, viewable and readable as train ids) and
  <k>_panel.png for each (image, label, prediction) sample; returns the panels [N, h, 3w, 3]."""
  colours = labels.full_palette(palette).reshape(-1).tolist()
  panels = []
  for k, (image, label, pred) in enumerate(samples):
    save_png(label_png(pred, colours), os.path.join(directory, f"{k:03d}_pred.png"))
    panels.append(panel(image, label, pred, palette, normalization))
    save_png(Image.fromarray(panels[-1]), os.path.join(directory, f"{k:03d}_panel.png"))
  return np.stack(panels) if panels else np.zeros((0, 1, 1, 3), np.uint8)


# Anchors of a perceptually ordered black -> purple -> red -> orange -> yellow scale (inferno at 0, 1/4 ... 1).
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
  """uint8 [H, W, 3] colouring of [H, W] values on the fixed scale [0, vmax] (fixed, so that evaluations compare)."""
  t = np.clip(np.asarray(values, np.float64) / vmax, 0.0, 1.0) * (len(_HEAT) - 1)
  lo = np.minimum(np.floor(t).astype(np.int64), len(_HEAT) - 2)
  frac = (t - lo)[..., None]
  return np.round(_HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac).astype(np.uint8)


def write_heatmaps(directory: str, images, maps: dict, normalization) -> np.ndarray:
  """Writes <k>_<name>.png for each map {name: ([N, H, W] values, vmax)} and <k>_maps.png, image | map | ...
  in the order given; returns those panels [N, H, (1 + len(maps)) W, 3]."""
  panels = []
  for k, image in enumerate(images):
    tiles = [pipeline.denormalize_np(image, normalization)]
    for name, (values, vmax) in maps.items():
      tiles.append(heatmap(nearest(values[k], tiles[0].shape[:2]), vmax))
      save_png(Image.fromarray(tiles[-1]), os.path.join(directory, f"{k:03d}_{name}.png"))
    panels.append(np.concatenate(tiles, axis=1))
    save_png(Image.fromarray(panels[-1]), os.path.join(directory, f"{k:03d}_maps.png"))
  return np.stack(panels) if panels else np.zeros((0, 1, 1, 3), np.uint8)


def thumbnails(panels: np.ndarray, max_height: int = 256) -> np.ndarray:
  """Panels subsampled by an integer stride to at most max_height rows: TensorBoard keeps every image of every
  evaluation, and full-size Cityscapes panels would add megabytes per evaluation."""
  stride = -(-panels.shape[1] // max_height) if len(panels) else 1
  return panels[:, ::stride, ::stride]


def label_png(train_ids: np.ndarray, colours: list[int]) -> Image.Image:
  """A palette PNG image whose pixel values are the train ids (colours: full_palette(...).reshape(-1))."""
  png = Image.fromarray(np.asarray(train_ids, np.uint8), "P")
  png.putpalette(colours)
  return png


def save_png(image: Image.Image, path: str) -> None:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  files.write_atomic(path, buffer.getvalue())
