"""Where each key of the official PyTorch checkpoints lands in our Flax variables, per architecture.

A rule maps one (normalised: `module.` components dropped) state-dict key to a `Dest` (variable path and
the layout change it needs), a `Skip` (left out on purpose, with the reason), or None (the model has no
place for it: reported as unused). Whether a `weight` is a conv kernel or a BatchNorm scale is read off
the model's own variable tree, so the rules only deal with prefixes and numbering.

A FADA checkpoint's discriminator (`model_D.*`, core/models/discriminator.py PixelDiscriminator) maps to
('discriminators', 'd_main', ...): the params of FADA's discriminator state (`uda_jax.methods.fada.DISC`),
which `init_from.load_states` restores when the config's discriminator has the same shapes. There is no model
to read its shapes off; the importer checks the file's discriminator for consistency instead.
"""

import dataclasses
import re
from typing import Callable, Mapping, Sequence

from uda_jax.methods.fada import DISC as FADA_DISC
from uda_jax.models.vgg import VGG16_CONV_NAMES


@dataclasses.dataclass(frozen=True)
class Dest:
  path: tuple[str, ...]  # ('params' | 'batch_stats', module..., leaf)
  # 'conv': OIHW -> HWIO; 'conv_t': ConvTranspose (I, O, kh, kw) -> (kh, kw, I, O);
  # 'linear_conv': Linear (O, I*kh*kw) viewed as conv OIHW -> HWIO; 'vector': as is.
  kind: str


@dataclasses.dataclass(frozen=True)
class Skip:
  reason: str
  bookkeeping: bool = False  # e.g. num_batches_tracked: not even worth listing as unused


@dataclasses.dataclass(frozen=True)
class Ctx:
  source: str  # which checkpoint family the file looks like (see DETECT)
  num_classes: int
  aspp_branches: int | None
  multi_level: bool


Targets = Mapping[tuple[str, ...], object]
Rule = Callable[[str, Ctx, Targets], "Dest | Skip | None"]

# torchvision `vgg16().features` indices of the 13 convs, and the DeepLab-VGG re-indexing once pool4 (23)
# is dropped (conv5_x shift down by one) with fc6 / fc7 appended at 29 / 31 (AdaptSegNet, FADA).
TV_VGG16 = dict(zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), VGG16_CONV_NAMES))
DEEPLAB_VGG16 = dict(zip((0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31), VGG16_CONV_NAMES + ("fc6", "fc7")))


# Top-level entry of an imported directory holding {train state name: params} of discriminators.
DISCRIMINATORS = "discriminators"
# FADA PixelDiscriminator: D = Sequential(conv 3x3 in -> ndf, LeakyReLU, conv 3x3 ndf -> ndf // 2, LeakyReLU);
# cls1 / cls2 (source / target heads) conv 3x3 ndf // 2 -> K. Our module names (models/discriminators.py).
FADA_D_MODULES = {"D.0": "D_0", "D.2": "D_2", "cls1": "cls1", "cls2": "cls2"}


def normalise(name: str) -> str:
  """Drops DataParallel/DDP `module.` components."""
  return ".".join(p for p in name.split(".") if p != "module")


def join_indices(parts: Sequence[str]) -> list[str]:
  """['layer3', '0', 'downsample', '1'] -> ['layer3_0', 'downsample_1'] (our module names)."""
  out = []
  for p in parts:
    if p.isdigit() and out:
      out[-1] += f"_{p}"
    else:
      out.append(p)
  return out


def leaf_dest(mods: Sequence[str], leaf: str, targets: Targets) -> Dest | None:
  """A Conv (params under 'conv') or BatchNorm leaf of module `mods`, whichever the model has there."""
  conv = ("params", *mods, "conv")
  if leaf == "weight":
    if conv + ("kernel",) in targets:
      return Dest(conv + ("kernel",), "conv")
    cands = [("params", *mods, "scale")]
  elif leaf == "bias":
    if conv + ("bias",) in targets:
      return Dest(conv + ("bias",), "vector")
    cands = [("params", *mods, "bias")]
  elif leaf in ("running_mean", "running_var"):
    cands = [("batch_stats", *mods, leaf.removeprefix("running_"))]
  else:
    cands = []
  return next((Dest(p, "vector") for p in cands if p in targets), None)


def _head(mods: Sequence[str], leaf: str, ctx: Ctx, targets: Targets, aux: bool = False):
  """ASPP classifier `<head>.conv2d_list.<i>`: branches beyond the model's `aspp_branches` are by design."""
  m = re.fullmatch(r"conv2d_list_(\d+)", mods[1]) if len(mods) == 2 else None
  if m and ctx.aspp_branches is not None and int(m.group(1)) >= ctx.aspp_branches:
    return Skip(f"ASPP branch {m.group(1)}: the model sums {ctx.aspp_branches} branches (model.aspp_branches)")
  if aux and not ctx.multi_level:
    return Skip("auxiliary head on layer3: the model is single-level")
  return leaf_dest(mods, leaf, targets)


def _resnet(parts: Sequence[str], ctx: Ctx, targets: Targets):
  leaf = parts[-1]
  if leaf == "num_batches_tracked":
    return Skip("BatchNorm step counter", bookkeeping=True)
  mods = join_indices(parts[:-1])
  if mods[0] in ("layer5", "layer6"):
    return _head(mods, leaf, ctx, targets, aux=mods[0] == "layer5")
  if mods[0] == "fc":
    return Skip("ImageNet classifier")
  return leaf_dest(["backbone", *mods], leaf, targets)


def deeplab_resnet(name: str, ctx: Ctx, targets: Targets):
  """Caffe-layout DeepLab-v2: `Scale.`-prefixed DeepLab init, or AdaptSegNet DeeplabMulti names."""
  parts = name.split(".")
  if parts[0] == "Scale":
    parts = parts[1:]
    # As AdaptSegNet's loader: this head was trained for another class count.
    if parts[0] == "layer5" and ctx.num_classes == 19:
      return Skip("head of the DeepLab init file (other classes); the official loader skips it for 19 classes")
  return _resnet(parts, ctx, targets)


def fada_discriminator(parts: Sequence[str]) -> Dest | None:
  """`model_D.<D.0|D.2|cls1|cls2>.<weight|bias>` -> FADA's discriminator state params; None for other keys."""
  mod = FADA_D_MODULES.get(".".join(parts[1:-1]))
  if mod is None or parts[-1] not in ("weight", "bias"):
    return None
  base = (DISCRIMINATORS, FADA_DISC, mod, "conv")
  return Dest(base + ("kernel",), "conv") if parts[-1] == "weight" else Dest(base + ("bias",), "vector")


def torchvision_resnet(name: str, ctx: Ctx, targets: Targets):
  """torchvision ResNet-101 or a FADA checkpoint (feature_extractor.backbone.* / classifier.* / model_D.*)."""
  parts = name.split(".")
  if parts[0] == "model_D":
    return fada_discriminator(parts)
  if parts[0] == "feature_extractor":
    parts = parts[1:]
  if parts[0] == "backbone":
    parts = parts[1:]
  elif parts[0] == "classifier":  # FADA ASPP_Classifier_V2 on layer4 = our main head
    parts = ["layer6", *parts[1:]]
  return _resnet(parts, ctx, targets)


def deeplab_vgg16(name: str, ctx: Ctx, targets: Targets):
  """torchvision / Caffe-converted VGG16, AdaptSegNet DeeplabVGG, or FADA vgg16 (feature_extractor.backbone.N)."""
  parts = name.split(".")
  if parts[0] == "model_D":
    return fada_discriminator(parts)
  if parts[:2] == ["feature_extractor", "backbone"]:
    parts = ["features", *parts[2:]]
  if parts[0] == "features" and len(parts) == 3 and parts[1].isdigit():
    table = TV_VGG16 if ctx.source == "torchvision_vgg16" else DEEPLAB_VGG16
    mod = table.get(int(parts[1]))
    return leaf_dest([mod], parts[2], targets) if mod else None
  if parts[0] == "classifier" and len(parts) == 3 and parts[1].isdigit():
    return Skip("ImageNet fully-connected layer: DeepLab-VGG uses new dilated 3x3 fc6/fc7 instead")
  if parts[0] == "classifier":
    return _head(join_indices(parts[:-1]), parts[-1], ctx, targets)
  return None


def fcn8s_vgg16(name: str, ctx: Ctx, targets: Targets):
  """torchvision-named VGG16 (`vgg16_from_caffe.pth`: fc6/fc7 from the Linear layers) or FCN8s names."""
  parts = name.split(".")
  if len(parts) != 2 and not (parts[0] in ("features", "classifier") and len(parts) == 3):
    return None
  leaf = parts[-1]
  if parts[0] == "features":
    mod = TV_VGG16.get(int(parts[1])) if parts[1].isdigit() else None
    return leaf_dest([mod], leaf, targets) if mod else None
  if parts[0] == "classifier":
    fc = {"0": "fc6", "3": "fc7"}.get(parts[1])
    if fc is None:
      return Skip("ImageNet 1000-way classifier") if parts[1] == "6" else None
    if leaf == "weight" and ("params", fc, "conv", "kernel") in targets:
      return Dest(("params", fc, "conv", "kernel"), "linear_conv")
    return leaf_dest([fc], leaf, targets)
  if parts[0].startswith("upscore") and leaf == "weight":
    path = ("params", parts[0], "kernel")
    return Dest(path, "conv_t") if path in targets else None
  return leaf_dest([parts[0]], leaf, targets)


def _detect_resnet(names):
  return "deeplab_init" if any(n.startswith("Scale.") for n in names) else "deeplab_multi"


def _detect_resnet_tv(names):
  fada = any(n.split(".")[0] in ("feature_extractor", "classifier", "backbone") for n in names)
  return "fada" if fada else "torchvision_resnet"


def _detect_vgg(names):
  if any(n.startswith("feature_extractor.backbone.") for n in names):
    return "fada_vgg16"
  if any(re.match(r"features\.(23|29|31)\.", n) for n in names):
    return "deeplab_vgg16"
  return "torchvision_vgg16"


def _detect_fcn(names):
  return "fcn8s" if any(n.startswith("conv1_1.") for n in names) else "torchvision_vgg16"


RULES: dict[str, Rule] = {
    "deeplabv2_resnet101": deeplab_resnet,
    "deeplabv2_resnet101_tv": torchvision_resnet,
    "deeplabv2_vgg16": deeplab_vgg16,
    "fcn8s_vgg16": fcn8s_vgg16,
}
DETECT: dict[str, Callable[[Sequence[str]], str]] = {
    "deeplabv2_resnet101": _detect_resnet,
    "deeplabv2_resnet101_tv": _detect_resnet_tv,
    "deeplabv2_vgg16": _detect_vgg,
    "fcn8s_vgg16": _detect_fcn,
}


def layout_notes(arch: str, names: Sequence[str]) -> list[str]:
  """Warnings for files that fit by shape but not by meaning (the two ResNet layouts share all shapes)."""
  if arch == "deeplabv2_resnet101" and "fc.weight" in names:
    return ["file has an ImageNet 'fc' layer: a torchvision ResNet? Its weights assume stride on conv2 and "
            "floor pooling: use arch deeplabv2_resnet101_tv"]
  if arch == "deeplabv2_resnet101_tv" and any(n.startswith("Scale.") or n.startswith("layer5.") for n in names):
    return ["file looks like a Caffe DeepLab / AdaptSegNet ResNet: use arch deeplabv2_resnet101"]
  return []
