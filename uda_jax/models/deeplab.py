"""DeepLab-v2 segmenter: ResNet backbone + ASPP classifier(s), single- or multi-level (AdaptSegNet Fig. 2)."""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.layers import Conv, param_dtype
from uda_jax.models.mrnet_head import MRNetHead
from uda_jax.models.resnet import ResNet


class ASPPClassifier(nn.Module):
  """DeepLab-v2 ASPP: parallel 3x3 dilated convs to classes, summed.

  `branches` picks how many of `dilations` are summed. The official AdaptSegNet code returns from inside its
  loop, so only the first two (6, 12) contribute: branches=2 reproduces the published numbers; 4 is the paper.
  """

  num_classes: int
  dilations: Sequence[int] = (6, 12, 18, 24)
  branches: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not 1 <= self.branches <= len(self.dilations):
      raise ValueError(f"model.aspp_branches must be in 1..{len(self.dilations)}, got {self.branches}")
    out = 0.0
    for i, d in enumerate(self.dilations[: self.branches]):
      out = out + Conv(self.num_classes, 3, padding=d, dilation=d, use_bias=True, dtype=self.dtype,
                       name=f"conv2d_list_{i}")(x)
    return out


class DeepLabV2(nn.Module):
  """Returns {'main': logits from layer4 ('layer6'), 'features': layer4 features} and, multi-level only,
  {'aux': logits from layer3 ('layer5'), 'features_aux': layer3 features}, all at output stride 8, float32.
  'features' / 'features_aux' are exactly what the main / aux heads read.

  head='mrnet': MRNet's decoders (models/mrnet_head.py, `mrnet` = its options), the main one reading
  concat(layer4, layer3) (so 'features' is that, 3072 channels at ResNet-101 width), dropout from the 'dropout'
  rng while training."""

  num_classes: int = 19
  blocks: Sequence[int] = (3, 4, 23, 3)
  width: int = 64
  layout: str = "caffe"
  multi_level: bool = True
  aspp_dilations: Sequence[int] = (6, 12, 18, 24)
  aspp_branches: int = 2
  bn: dict = None
  dtype: Any = jnp.float32
  remat: bool = False
  head: str = "aspp"
  mrnet: dict = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    f3, f4 = ResNet(self.blocks, self.width, self.layout, self.bn, self.dtype, self.remat, name="backbone")(
        x.astype(self.dtype), train)
    if self.head == "mrnet":
      f4 = jnp.concatenate([f4, f3], axis=-1)
      head = lambda name: functools.partial(MRNetHead(self.num_classes, dilations=tuple(self.aspp_dilations),
                                                      bn=self.bn, dtype=self.dtype, name=name, **self.mrnet),
                                            train=train)
    elif self.head == "aspp":
      head = lambda name: ASPPClassifier(self.num_classes, tuple(self.aspp_dilations), self.aspp_branches,
                                         self.dtype, name=name)
    else:
      raise ValueError(f"model.head must be 'aspp' or 'mrnet', got {self.head!r}")
    f32 = lambda t: t.astype(param_dtype(self.dtype))  # float32 (float64) for losses, softmax and resizing
    out = {"main": f32(head("layer6")(f4)), "features": f32(f4)}
    if self.multi_level:
      out["aux"], out["features_aux"] = f32(head("layer5")(f3)), f32(f3)
    return out
