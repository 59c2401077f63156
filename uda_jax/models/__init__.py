"""Model construction from config."""

import jax
import jax.numpy as jnp

from uda_jax.errors import UserError

from uda_jax.models.deeplab import DeepLabV2
from uda_jax.models.discriminators import FCDiscriminator, PixelDiscriminator
from uda_jax.models.vgg import DeepLabV2VGG16

ARCHS = ("deeplabv2_resnet", "deeplabv2_vgg16")

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


DTYPES = ("float32", "bfloat16", "float64")


def compute_dtype(model_cfg):
  """config.model.dtype, checked: float64 needs JAX's x64 mode, or JAX would silently compute in float32."""
  if model_cfg.dtype not in DTYPES:
    raise UserError(f"model.dtype={model_cfg.dtype!r}: choose one of {', '.join(DTYPES)}")
  if model_cfg.dtype == "float64" and not jax.config.jax_enable_x64:
    raise UserError("model.dtype='float64' needs JAX's 64-bit mode: add --jax_enable_x64 (or set JAX_ENABLE_X64=1)")
  return jnp.dtype(model_cfg.dtype)


def build_segmenter(model_cfg, axis_name=None, remat: bool = False):
  """DeepLab-v2 from `config.model`; `axis_name` keeps BatchNorm running statistics equal across devices;
  `remat` (config.train.remat) recomputes the ResNet blocks' activations in the backward pass."""
  bn = dict(mode=model_cfg.bn_mode, eps=model_cfg.bn_eps, axis_name=axis_name)
  dtype = compute_dtype(model_cfg)
  if model_cfg.arch == "deeplabv2_vgg16":
    return DeepLabV2VGG16(num_classes=model_cfg.num_classes, aspp_dilations=tuple(model_cfg.aspp_dilations),
                          aspp_branches=model_cfg.aspp_branches, dtype=dtype)
  if model_cfg.arch != "deeplabv2_resnet":
    raise UserError(f"model.arch {model_cfg.arch!r} is not known; choose one of {', '.join(ARCHS)}")
  blocks = tuple(model_cfg.blocks) if model_cfg.blocks else DEPTHS[model_cfg.depth]
  return DeepLabV2(num_classes=model_cfg.num_classes, blocks=blocks, width=model_cfg.width,
                   layout=model_cfg.layout, multi_level=model_cfg.multi_level,
                   aspp_dilations=tuple(model_cfg.aspp_dilations), aspp_branches=model_cfg.aspp_branches,
                   bn=bn, dtype=dtype, remat=remat)


DISCRIMINATORS = ("fc", "pixel")


def build_discriminator(disc_cfg, classes_per_domain: int = 1, dtype=jnp.float32):
  """`config.disc`: 'fc' (AdaptSegNet, one logit per patch) or 'pixel' (FADA's fine-grained discriminator with
  `classes_per_domain` channels per domain); convs compute in `dtype` (the segmenter's)."""
  if disc_cfg.arch == "fc":
    return FCDiscriminator(tuple(disc_cfg.channels), dtype)
  if disc_cfg.arch == "pixel":
    return PixelDiscriminator(classes_per_domain, disc_cfg.width, dtype)
  raise UserError(f"disc.arch {disc_cfg.arch!r} is not known; choose one of {', '.join(DISCRIMINATORS)}")
