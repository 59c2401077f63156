"""Model construction from config."""

import jax.numpy as jnp

from uda_jax.errors import UserError

from uda_jax.models.deeplab import DeepLabV2
from uda_jax.models.discriminators import FCDiscriminator, PixelDiscriminator
from uda_jax.models.vgg import DeepLabV2VGG16

ARCHS = ("deeplabv2_resnet", "deeplabv2_vgg16")

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def build_segmenter(model_cfg, axis_name=None):
  """DeepLab-v2 from `config.model`; `axis_name` keeps BatchNorm running statistics equal across devices."""
  bn = dict(mode=model_cfg.bn_mode, eps=model_cfg.bn_eps, axis_name=axis_name)
  if model_cfg.arch == "deeplabv2_vgg16":
    return DeepLabV2VGG16(num_classes=model_cfg.num_classes, aspp_dilations=tuple(model_cfg.aspp_dilations),
                          aspp_branches=model_cfg.aspp_branches, dtype=jnp.dtype(model_cfg.dtype))
  if model_cfg.arch != "deeplabv2_resnet":
    raise UserError(f"model.arch {model_cfg.arch!r} is not known; choose one of {', '.join(ARCHS)}")
  blocks = tuple(model_cfg.blocks) if model_cfg.blocks else DEPTHS[model_cfg.depth]
  return DeepLabV2(num_classes=model_cfg.num_classes, blocks=blocks, width=model_cfg.width,
                   layout=model_cfg.layout, multi_level=model_cfg.multi_level,
                   aspp_dilations=tuple(model_cfg.aspp_dilations), aspp_branches=model_cfg.aspp_branches,
                   bn=bn, dtype=jnp.dtype(model_cfg.dtype))


DISCRIMINATORS = ("fc", "pixel")


def build_discriminator(disc_cfg, classes_per_domain: int = 1):
  """`config.disc`: 'fc' (AdaptSegNet, one logit per patch) or 'pixel' (FADA's fine-grained discriminator with
  `classes_per_domain` channels per domain)."""
  if disc_cfg.arch == "fc":
    return FCDiscriminator(tuple(disc_cfg.channels))
  if disc_cfg.arch == "pixel":
    return PixelDiscriminator(classes_per_domain, disc_cfg.width)
  raise UserError(f"disc.arch {disc_cfg.arch!r} is not known; choose one of {', '.join(DISCRIMINATORS)}")
