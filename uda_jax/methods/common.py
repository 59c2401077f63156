"""Pieces every scheme shares: the segmenter forward at label resolution and state construction."""

import jax
import jax.numpy as jnp

from uda_jax import losses, models, optim, state as state_lib
from uda_jax.errors import UserError
from uda_jax.ops import resize_bilinear


def segment(seg_state, params, batch_stats, image, train: bool = True, rng=None):
  """Segmenter forward; returns (outputs with logits upsampled to the image size, new batch_stats).

  Upsampling before the loss and before the discriminator's softmax is what the official code does.
  `rng` drives dropout (MRNet's heads); models without dropout ignore it.
  """
  out, mutated = seg_state.apply_fn({"params": params, "batch_stats": batch_stats}, image, train=train,
                                    mutable=["batch_stats"], rngs=None if rng is None else {"dropout": rng})
  size = image.shape[1:3]
  up = {k: resize_bilinear(v, size) for k, v in out.items() if k in ("main", "aux")}
  return {**out, **up}, mutated["batch_stats"]


def segmentation_loss(outputs, labels, lambda_seg: dict, axis_name, reduction: str = "mean"):
  """Eq. (3)/(5): sum over levels of lambda_seg[level] * CE(ignore 255), averaged over labelled pixels, or summed
  over them per image (reduction 'sum', LSD-seg; config.loss.ce_reduction)."""
  if reduction not in ("mean", "sum"):
    raise UserError(f"loss.ce_reduction={reduction!r}: choose 'mean' or 'sum'")
  ce = (lambda z: losses.cross_entropy(z, labels, axis_name)) if reduction == "mean" else (
      lambda z: losses.summed_cross_entropy(z, labels))
  per_level = {lvl: ce(outputs[lvl]) for lvl in lambda_seg}
  return sum(lambda_seg[lvl] * per_level[lvl] for lvl in lambda_seg), per_level


def levels(config):
  return ("main", "aux") if config.model.multi_level else ("main",)


def create_segmenter_state(config, rng, image_shape, axis_name=None):
  if config.optim.get("legacy_sgd", False) and (config.model.arch != "deeplabv2_resnet"
                                                 or config.model.layout != "caffe"):
    raise UserError("optim.legacy_sgd reproduces the official optimizer of the Caffe-layout DeepLab-v2 ResNet "
                    f"(model.arch='deeplabv2_resnet', model.layout='caffe'), not of {config.model.arch!r} / "
                    f"{config.model.layout!r}: set optim.legacy_sgd=False")
  module = models.build_segmenter(config.model, axis_name, remat=config.train.get("remat", False))
  variables = module.init(rng, jnp.zeros(image_shape, jnp.float32), train=False)
  return state_lib.create(module, optim.segmenter_sgd(config.optim, variables["params"]), variables)


def feature_shape(seg_state, image_shape):
  """Shape of the segmenter's 'features' for an image batch of `image_shape`: read off the model, so any
  backbone's stride and width fit (ResNet layer4 2048, VGG fc7 1024)."""
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  image = jax.ShapeDtypeStruct(image_shape, jnp.float32)
  return jax.eval_shape(lambda x: seg_state.apply_fn(variables, x, train=False)["features"], image).shape


def create_discriminator_state(config, rng, input_shape, classes_per_domain: int = 1, arch=None):
  module = models.build_discriminator(config.disc, classes_per_domain, models.compute_dtype(config.model), arch)
  out = jax.eval_shape(module.init_with_output, rng, jnp.zeros(input_shape, jnp.float32))[0]
  if 0 in out.shape:
    raise UserError(f"discriminator input {input_shape[1:3]} is too small for {len(config.disc.channels) + 1} "
                    "stride-2 convs: use larger images or fewer disc.channels")
  variables = module.init(rng, jnp.zeros(input_shape, jnp.float32))
  return state_lib.create(module, optim.discriminator_adam(config.optim), variables)


def stop(tree):
  return jax.tree.map(jax.lax.stop_gradient, tree)
