"""ResNet backbones at output stride 8, in the two layouts the official code uses.

'caffe' (DeepLab-v2, AdaptSegNet / MRNet): stride on the first 1x1 conv, ceil-mode max-pool, every block of
  layer3 at dilation 2 and of layer4 at dilation 4.
'torchvision' (FADA): stride on the 3x3 conv, floor max-pool, first block of layer3 / layer4 at the previous
  dilation (1 / 2), the others at 2 / 4.
Weights of one layout do not fit the other. Module names mirror the PyTorch state-dict keys
(layer3_0 <-> layer3.0) so the importer is a rename.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.layers import BatchNorm, Conv, max_pool


class Bottleneck(nn.Module):
  planes: int
  stride: int
  dilation: int
  downsample: bool
  layout: str
  bn: dict
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s1, s2 = (self.stride, 1) if self.layout == "caffe" else (1, self.stride)
    out = Conv(self.planes, 1, stride=s1, dtype=self.dtype, name="conv1")(x)
    out = BatchNorm(**self.bn, name="bn1")(out, train, relu=True)
    out = Conv(self.planes, 3, stride=s2, padding=self.dilation, dilation=self.dilation, dtype=self.dtype,
               name="conv2")(out)
    out = BatchNorm(**self.bn, name="bn2")(out, train, relu=True)
    out = Conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(out)
    if self.downsample:
      x = Conv(self.planes * 4, 1, stride=self.stride, dtype=self.dtype, name="downsample_0")(x)
      x = BatchNorm(**self.bn, name="downsample_1")(x, train)
    return BatchNorm(**self.bn, name="bn3")(out, train, residual=x, relu=True)  # relu(bn3(out) + x)


class ResNet(nn.Module):
  """Returns (layer3, layer4) features; stride 8 overall."""

  blocks: Sequence[int] = (3, 4, 23, 3)
  width: int = 64
  layout: str = "caffe"
  bn: dict = None
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block's activations in the backward pass (train.remat)

  @nn.compact
  def __call__(self, x, train: bool):
    if self.layout not in ("caffe", "torchvision"):
      raise ValueError(f"model.layout must be 'caffe' or 'torchvision', got {self.layout!r}")
    bn = dict(self.bn or {})
    x = Conv(self.width, 7, stride=2, padding=3, dtype=self.dtype, name="conv1")(x)
    x = BatchNorm(**bn, name="bn1")(x, train, relu=True)
    x = max_pool(x, 3, 2, 1, ceil_mode=self.layout == "caffe")
    inplanes = self.width
    outs = []
    # (stride, dilation of the first block, dilation of the other blocks) per layer.
    if self.layout == "caffe":
      plan = [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 4, 4)]
    else:
      plan = [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
    block = nn.remat(Bottleneck, static_argnums=(2,)) if self.remat else Bottleneck  # (self, x, train)
    for i, (n, (stride, d_first, d_rest)) in enumerate(zip(self.blocks, plan)):
      planes = self.width * 2**i
      for j in range(n):
        first = j == 0
        # Caffe DeepLab also gives the first block of a dilated layer a projection (its `dilation in (2, 4)`).
        downsample = first and (stride != 1 or inplanes != planes * 4 or (self.layout == "caffe" and d_first > 1))
        x = block(planes, stride if first else 1, d_first if first else d_rest, downsample, self.layout,
                       bn, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        inplanes = planes * 4
      outs.append(x)
    return outs[2], outs[3]
