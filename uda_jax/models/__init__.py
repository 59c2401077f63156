"""Model construction from config."""

import jax
import jax.numpy as jnp

from uda_jax.errors import UserError

from uda_jax.models.deeplab import ASPPClassifier, DeepLabV2
from uda_jax.models.fcn8s import FCN8s
from uda_jax.models.lsd_networks import Generator, PatchDiscriminator
from uda_jax.models.discriminators import FRONTS, FCDiscriminator, FeatureDiscriminator, PixelDiscriminator
from uda_jax.models.vgg import DeepLabV2VGG16

ARCHS = ("deeplabv2_resnet", "deeplabv2_vgg16", "fcn8s")

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
  if model_cfg.head not in ("aspp", "mrnet"):
    raise UserError(f"model.head {model_cfg.head!r} is not known; choose 'aspp' or 'mrnet'")
  if model_cfg.head == "mrnet" and model_cfg.arch != "deeplabv2_resnet":
    raise UserError(f"model.head='mrnet' needs model.arch='deeplabv2_resnet', not {model_cfg.arch!r}")
  if model_cfg.head == "mrnet" and model_cfg.head_norm == "gn" and model_cfg.head_width % 32:
    raise UserError(f"model.head_width={model_cfg.head_width}: GroupNorm(32) needs a multiple of 32")
  if model_cfg.arch == "fcn8s":  # LSD-seg's F; model.width scales VGG16's stages (64 = the real one)
    if model_cfg.multi_level or model_cfg.head != "aspp":
      raise UserError("model.arch='fcn8s' has one output and no DeepLab head: set model.multi_level=False and "
                      "model.head='aspp' (the default)")
    return FCN8s(num_classes=model_cfg.num_classes, fc_dim=model_cfg.fc_dim, width=model_cfg.width,
                 dropout=model_cfg.get("fc_dropout", 0.5), random_init=model_cfg.get("random_init", False),
                 dtype=dtype)
  if model_cfg.arch == "deeplabv2_vgg16":
    return DeepLabV2VGG16(num_classes=model_cfg.num_classes, aspp_dilations=tuple(model_cfg.aspp_dilations),
                          aspp_branches=model_cfg.aspp_branches, dtype=dtype, multi_level=model_cfg.multi_level)
  if model_cfg.arch != "deeplabv2_resnet":
    raise UserError(f"model.arch {model_cfg.arch!r} is not known; choose one of {', '.join(ARCHS)}")
  blocks = tuple(model_cfg.blocks) if model_cfg.blocks else DEPTHS[model_cfg.depth]
  return DeepLabV2(num_classes=model_cfg.num_classes, blocks=blocks, width=model_cfg.width,
                   layout=model_cfg.layout, multi_level=model_cfg.multi_level,
                   aspp_dilations=tuple(model_cfg.aspp_dilations), aspp_branches=model_cfg.aspp_branches,
                   bn=bn, dtype=dtype, remat=remat, head=model_cfg.head,
                   mrnet=dict(width=model_cfg.head_width, norm=model_cfg.head_norm, se=model_cfg.head_se,
                              dropout=model_cfg.head_dropout))


def prediction_logits(outputs, aux_weight: float = 0.0):
  """The logits a segmenter predicts with: z_main, or z_main + aux_weight z_aux (MRNet: 0.5)."""
  return outputs["main"] + aux_weight * outputs["aux"] if aux_weight else outputs["main"]


# The decoders (ASPP heads) of each level, by parameter name.
HEADS = {"deeplabv2_resnet": {"main": "layer6", "aux": "layer5"},
         "deeplabv2_vgg16": {"main": "classifier", "aux": "classifier_aux"}}


def head_name(model_cfg, level: str) -> str:
  return HEADS[model_cfg.arch][level]


def build_head(model_cfg):
  """A standalone decoder exactly like the segmenter's: applied to its params and the level's 'features' /
  'features_aux' it gives that level's logits (JAL + WTM's transferred decoders apply it to new weights)."""
  return ASPPClassifier(model_cfg.num_classes, tuple(model_cfg.aspp_dilations), model_cfg.aspp_branches,
                        compute_dtype(model_cfg))


def build_generator(config):
  """LSD-seg's G (config.gen) in the segmenter's compute dtype."""
  return Generator(config.gen.width, config.gen.dropout, compute_dtype(config.model))


def build_patch_discriminator(config):
  """LSD-seg's 4-way patch D: disc.width channels, disc.dropout; loss.aux_head / loss.patch_disc (Table 4)."""
  return PatchDiscriminator(config.model.num_classes, config.disc.width, config.disc.dropout,
                            config.loss.aux_head, config.loss.patch_disc, compute_dtype(config.model))


DISCRIMINATORS = ("fc", "pixel")


def check_discriminator(disc_cfg):
  """One clear error per bad `config.disc` value."""
  if disc_cfg.arch not in DISCRIMINATORS:
    raise UserError(f"disc.arch {disc_cfg.arch!r} is not known; choose one of {', '.join(DISCRIMINATORS)}")
  if disc_cfg.front not in FRONTS:
    raise UserError(f"disc.front {disc_cfg.front!r} is not known; choose one of {', '.join(FRONTS)}")
  if disc_cfg.front != "none" and disc_cfg.arch != "fc":
    raise UserError(f"disc.front={disc_cfg.front!r} needs disc.arch='fc', not {disc_cfg.arch!r}")
  for key in ("count", "width_mult"):
    value = disc_cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise UserError(f"disc.{key}={value!r}: give a whole number >= 1")


def build_discriminator(disc_cfg, classes_per_domain: int = 1, dtype=jnp.float32, arch=None):
  """`config.disc`: 'fc' (AdaptSegNet, one logit per patch; channels x width_mult, optional ASPP front) or
  'pixel' (FADA's fine-grained discriminator with `classes_per_domain` channels per domain); convs compute in
  `dtype` (the segmenter's). arch='feature': the 1x1-conv feature discriminator (disc.feature_channels)."""
  check_discriminator(disc_cfg)
  if arch == "feature":  # pixel-wise weighted DA's D_aux, beside the configured one
    return FeatureDiscriminator(tuple(disc_cfg.feature_channels), dtype)
  if disc_cfg.arch == "fc":
    return FCDiscriminator(tuple(c * disc_cfg.width_mult for c in disc_cfg.channels), dtype, disc_cfg.front)
  if disc_cfg.arch == "pixel":
    return PixelDiscriminator(classes_per_domain, disc_cfg.width * disc_cfg.width_mult, dtype)
