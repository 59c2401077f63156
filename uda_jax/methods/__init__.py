"""Schemes by name. Each module provides create_states(config, rng, shapes) and
losses(params, states, batch, rng, config, axis_name) -> ({state name: loss}, {'batch_stats', 'metrics'}); and
optionally inference_segmenters(config, states) (see `segmenters`), visual_maps(config, states, images) (see
`visual_maps`) and reconstructions(config, states, source_image, target_image) (see `reconstructions`)."""

import importlib

METHODS = ("source_only", "adaptsegnet", "fada", "jal_wtm", "mrnet", "pixel_weighted", "lsdseg")


def get(name: str):
  if name not in METHODS:
    raise ValueError(f"config.method {name!r} is not known; choose one of {', '.join(METHODS)}")
  return importlib.import_module(f"uda_jax.methods.{name}")


def segmenters(config, states) -> dict:
  """{name: segmenter TrainState} that evaluation, prediction and CCD use, the headline first: the trained
  'seg' state, or what the method evaluates instead (JAL + WTM: the transferred decoder DecT2, and with
  eval.original_decoder also Dec2). Names after the first prefix their extra result columns."""
  module = get(config.method)
  if hasattr(module, "inference_segmenters"):
    return module.inference_segmenters(config, states)
  return {"": states["seg"]}


def headline_segmenter(config, states):
  """The segmenter --mode=predict and CCD use: the first of `segmenters`."""
  return next(iter(segmenters(config, states).values()))


def visual_maps(config, states, images) -> dict:
  """{name: ([N, H, W] values, vmax)}: per-pixel maps of what the scheme weights by, for the first evaluation
  images (drawn as heat maps beside the prediction panels); {} for schemes without any."""
  module = get(config.method)
  if not len(images):
    return {}
  if hasattr(module, "visual_maps"):
    return module.visual_maps(config, states, images)
  if config.loss.get("genmap_weights", False):  # another scheme with GenMap weights: draw them the same way
    return get("pixel_weighted").visual_maps(config, states, images)
  return {}


def reconstructions(config, states, batch):
  """uint8 RGB image of what a generative scheme makes of the first source and target image of a training batch
  (LSD-seg: each image beside G's reconstruction), or None."""
  module = get(config.method)
  if not hasattr(module, "reconstructions") or batch is None:
    return None
  return module.reconstructions(config, states, batch["source_image"], batch["target_image"])
