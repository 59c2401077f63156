"""Training augmentations of one example: pure TF graph functions of a stateless seed.

Every random function takes `seed`, an int tensor of shape [2], and is a pure function of it; the pipeline derives
each example's seed from (config seed, role, stream position), so augmentations do not depend on tf.data's
scheduling or on the number of processes. Images are RGB [H, W, 3] in 0-255 (uint8 or float32, before
normalisation); labels are train ids [H, W] (any int dtype) or None for unlabelled images.

Semantics follow the official FADA code (JDAI-CV/FADA core/datasets/build.py and transform.py), which applies per
role, in this order: ColorJitter (torchvision) on the native image; then either Resize or RandomScale +
RandomCrop(pad_if_needed); then RandomHorizontalFlip; then normalisation. Differences: colour ops run in float
without PIL's rounding to uint8 after each op, and TF's bicubic resampling differs slightly from PIL's.
"""

import dataclasses
from typing import Any

import tensorflow as tf

from uda_jax.data.labels import IGNORE
from uda_jax.errors import UserError

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert('L') and torchvision's rgb_to_grayscale.


@dataclasses.dataclass(frozen=True)
class Augment:
  """One role's training augmentation (`config.data.{source,target}_aug`); the defaults change nothing."""

  scale: tuple[float, float] = (1.0, 1.0)  # Random scale factor range; needs `crop`.
  crop: tuple[int, int] | None = None  # (H, W) random crop after scaling; None = plain resize.
  flip: float = 0.0  # Horizontal flip probability.
  jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue.
  pad_image: float = 0.0  # Pixel value (0-255, before normalisation) of the crop's padding.
  # None: FADA's crop (padded if needed, any offset). An int m: LSD-seg's crop, never padded, its offset drawn
  # as the official np.random.randint(0, H - h - m) (m = 50 for Cityscapes, 0 for SYNTHIA).
  crop_margin: int | None = None

  @property
  def active(self) -> bool:
    return self.crop is not None or self.flip > 0 or any(self.jitter)

  @classmethod
  def from_config(cls, cfg: Any, field: str) -> "Augment":
    """Reads and checks a config block (None: no augmentation); `field` names it in error messages."""
    if cfg is None:
      return cls()
    get = lambda key, default: default if getattr(cfg, key, None) is None else getattr(cfg, key)
    scale = tuple(float(s) for s in get("scale", (1.0, 1.0)))
    crop = tuple(int(s) for s in get("crop", ()))
    flip = float(get("flip", 0.0))
    jitter = tuple(float(s) for s in get("jitter", (0.0,) * 4))
    pad_image = float(get("pad_image", 0.0))
    margin = getattr(cfg, "crop_margin", None)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
      raise UserError(f"{field}.scale={scale!r}: give (low, high) with 0 < low <= high.")
    if crop and (len(crop) != 2 or min(crop) <= 0):
      raise UserError(f"{field}.crop={crop!r}: give (H, W), or () for a plain resize.")
    if not crop and scale != (1.0, 1.0):
      raise UserError(f"{field}.scale={scale!r} needs {field}.crop=(H, W): random scaling is followed by a "
                      "random crop to a fixed size (FADA: RandomScale + RandomCrop).")
    if not 0 <= flip <= 1:
      raise UserError(f"{field}.flip={flip!r} is a probability; give a value in [0, 1].")
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
      raise UserError(f"{field}.jitter={jitter!r}: give (brightness, contrast, saturation, hue) >= 0, "
                      "hue <= 0.5 (torchvision ColorJitter strengths).")
    if not 0 <= pad_image <= 255:
      raise UserError(f"{field}.pad_image={pad_image!r}: give a pixel value in [0, 255].")
    if margin is not None and (not crop or not isinstance(margin, int) or margin < 0):
      raise UserError(f"{field}.crop_margin={margin!r}: give a whole number of pixels >= 0 together with "
                      f"{field}.crop, or None")
    return cls(scale, crop or None, flip, jitter, pad_image, margin)


# ---------------------------------------------------------------------------------------------------------------
# Geometry.


RESIZE_METHODS = ("bicubic", "lanczos")


def resize_image(image: tf.Tensor, size, method: str = "bicubic") -> tf.Tensor:
  """Bicubic (or Lanczos-3, as PIL's LANCZOS that LSD-seg evaluates with) antialiased resize to size (H, W)
  -> float32 in 0-255."""
  image = tf.image.resize(image, size, method={"bicubic": "bicubic", "lanczos": "lanczos3"}[method],
                          antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)  # Both overshoot.


def resize_label(label: tf.Tensor, size) -> tf.Tensor:
  """Nearest-neighbour resize of [H, W] ids (never blends ids into others)."""
  return tf.image.resize(label[..., None], size, method="nearest")[..., 0]


def sample_scale(seed: tf.Tensor, scale: tuple[float, float]) -> tf.Tensor:
  """The float64 scale factor random_scale draws from seed: uniform in [low, high)."""
  return tf.random.stateless_uniform([], seed, scale[0], scale[1], dtype=tf.float64)


def random_scale(image, label, seed, scale: tuple[float, float], size=None):
  """Resizes image (bicubic) and label (nearest) to (int(H * s), int(W * s)), s ~ U[scale).

  (H, W) is `size` if given, else the input's own size (FADA's RandomScale scales the native image). One
  resampling either way, from the input straight to the scaled size.
  """
  base = tf.cast(tf.shape(image)[:2] if size is None else tf.constant(size), tf.float64)
  scaled = tf.maximum(tf.cast(tf.floor(base * sample_scale(seed, scale)), tf.int32), 1)
  image = resize_image(image, scaled)
  return image, None if label is None else resize_label(label, scaled)


def random_crop_with_pad(image, label, seed, crop: tuple[int, int], pad_image: float = 0.0):
  """A random (H, W) = crop window; a side shorter than the crop is padded first.

  As FADA's RandomCrop(pad_if_needed) (torchvision F.pad with a 2-tuple pads both ends), a side short by d gets
  d pad pixels at each end, so the image lands at a uniformly random place inside the window. Padding is
  pad_image in the image and IGNORE in the label; the offset is uniform over all valid positions.
  """
  shape = tf.shape(image)
  deficit = tf.maximum(tf.constant(crop) - shape[:2], 0)
  paddings = tf.stack([deficit, deficit], axis=1)
  image = tf.pad(image, tf.concat([paddings, [[0, 0]]], 0), constant_values=tf.cast(pad_image, image.dtype))
  if label is not None:
    label = tf.pad(label, paddings, constant_values=tf.cast(IGNORE, label.dtype))
  room = shape[:2] + 2 * deficit - tf.constant(crop)  # Valid offsets: 0 ... room, inclusive.
  seeds = tf.random.experimental.stateless_split(seed, 2)
  top, left = (tf.random.stateless_uniform([], seeds[k], 0, room[k] + 1, dtype=tf.int32) for k in range(2))
  image = tf.ensure_shape(image[top:top + crop[0], left:left + crop[1]], (*crop, 3))
  if label is not None:
    label = tf.ensure_shape(label[top:top + crop[0], left:left + crop[1]], crop)
  return image, label


def random_crop_inside(image, label, seed, crop: tuple[int, int], margin: int):
  """LSD-seg's crop: a (H, W) = crop window at top-left offsets uniform in [0, size - crop - margin) (numpy's
  exclusive randint, as the official loaders draw them), never padded: the image must be larger than crop +
  margin on both sides (checked by the caller's message)."""
  room = tf.shape(image)[:2] - tf.constant(crop) - margin
  seeds = tf.random.experimental.stateless_split(seed, 2)
  top, left = (tf.random.stateless_uniform([], seeds[k], 0, room[k], dtype=tf.int32) for k in range(2))
  image = tf.ensure_shape(image[top:top + crop[0], left:left + crop[1]], (*crop, 3))
  if label is not None:
    label = tf.ensure_shape(label[top:top + crop[0], left:left + crop[1]], crop)
  return image, label


def crop_too_large_message(field: str, aug: "Augment", split_name: str) -> str:
  h, w = (c + aug.crop_margin + 1 for c in aug.crop)
  return (f"{split_name}: an image is smaller than {field}.crop={aug.crop} with crop_margin={aug.crop_margin} "
          f"allows (LSD-seg crops without padding: at least {h}x{w} after resizing); lower the crop or set "
          f"data.{field.split('.')[-1].removesuffix('_aug')}_size")


def random_flip(image, label, seed, p: float):
  """Flips image and label left-right together with probability p."""
  flip = tf.random.stateless_uniform([], seed) < p
  image = tf.convert_to_tensor(image)
  label = None if label is None else tf.convert_to_tensor(label)
  image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
  if label is not None:
    label = tf.cond(flip, lambda: label[:, ::-1], lambda: label)
  return image, label


# ---------------------------------------------------------------------------------------------------------------
# Colour (torchvision ColorJitter). Each op takes and returns float RGB in 0-255, clipped.


def grayscale(image: tf.Tensor) -> tf.Tensor:
  return tf.tensordot(image, tf.constant(_GRAY, image.dtype), 1)


def adjust_brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 255.0)


def adjust_contrast(image, factor):
  """Blends with the mean of the grayscale image."""
  mean = tf.reduce_mean(grayscale(image))
  return tf.clip_by_value(factor * image + (1 - factor) * mean, 0.0, 255.0)


def adjust_saturation(image, factor):
  """Blends with the grayscale image."""
  return tf.clip_by_value(factor * image + (1 - factor) * grayscale(image)[..., None], 0.0, 255.0)


def adjust_hue(image, shift):
  """Rotates the hue by `shift` of the full circle (in [-0.5, 0.5])."""
  return tf.clip_by_value(tf.image.adjust_hue(image / 255.0, shift) * 255.0, 0.0, 255.0)


COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def jitter_params(seed, strengths):
  """(order int32 [4]: a random permutation of COLOR_OPS' indices, factors float32 [4]) as torchvision draws them.

  brightness, contrast, saturation factors ~ U[max(0, 1 - x), 1 + x]; hue shift ~ U[-x, x].
  """
  seeds = tf.random.experimental.stateless_split(seed, 5)
  ranges = [(max(0.0, 1.0 - x), 1.0 + x) for x in strengths[:3]] + [(-strengths[3], strengths[3])]
  factors = tf.stack([tf.random.stateless_uniform([], seeds[k], lo, hi) for k, (lo, hi) in enumerate(ranges)])
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  return order, factors


def color_jitter(image, seed, strengths: tuple[float, float, float, float]):
  """torchvision ColorJitter(brightness, contrast, saturation, hue): the enabled ops in a random order.

  Ops of strength 0 are skipped, so zero strengths return the image unchanged (as float32).
  """
  x = tf.cast(image, tf.float32)
  if not any(strengths):
    return x
  order, factors = jitter_params(seed, strengths)

  def branch(k, x):
    if not strengths[k]:
      return lambda: x
    return lambda: COLOR_OPS[k](x, factors[k])

  for slot in range(4):
    x = tf.switch_case(order[slot], [branch(k, x) for k in range(4)])
  return x


# ---------------------------------------------------------------------------------------------------------------
# The whole train transform of one example.


def apply(aug: Augment, image, label, seed, size=None):
  """FADA's order: jitter (native image) -> random scale + crop, or resize to size -> flip.

  With aug.crop, `size` (if given) is the size the scale factors are relative to; without, the image (bicubic)
  and label (nearest) are resized to it. None keeps the native size. Returns (float32 image, label or None).
  """
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = color_jitter(image, seeds[0], aug.jitter)
  if aug.crop is not None:
    if aug.crop_margin is None or aug.scale != (1.0, 1.0) or size is not None:
      image, label = random_scale(image, label, seeds[1], aug.scale, size)
    if aug.crop_margin is None:
      image, label = random_crop_with_pad(image, label, seeds[2], aug.crop, aug.pad_image)
    else:
      image, label = random_crop_inside(image, label, seeds[2], aug.crop, aug.crop_margin)
  elif size is not None:
    image = resize_image(image, size)
    label = None if label is None else resize_label(label, size)
  if aug.flip > 0:
    image, label = random_flip(image, label, seeds[3], aug.flip)
  return tf.cast(image, tf.float32), label
