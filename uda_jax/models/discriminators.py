"""Discriminators, PyTorch default init as the official code leaves them.

FCDiscriminator (AdaptSegNet Sec. 5): five 4x4 stride-2 convs, LeakyReLU 0.2, no norm; fed the softmax of the
  upsampled segmentation logits (output space) or backbone features ("Ours (feature)"); the official code does
  not upsample its output. JAL + WTM's Table 3 variants: channels x a width multiplier ("wider
  discriminator"), and `front='aspp'` ("we add an ASPP module before the baseline discriminator"; the paper
  gives no sizes: here DeepLab-v2's ASPP, four 3x3 convs at dilations 6/12/18/24 from the input to the first
  conv's width, summed, then LeakyReLU 0.2, at full resolution, ahead of the unchanged five convs).
PixelDiscriminator (FADA Sec. 3.2, `PixelDiscriminator(2048, ndf=256)`): the fine-grained discriminator, two
  3x3 convs on the features, then a source head and a target head of `classes_per_domain` channels each,
  concatenated (source first) and upsampled (align_corners=True) to `size`. classes_per_domain=1 is the
  traditional binary domain discriminator.
FeatureDiscriminator (pixel-wise weighted DA, D_aux): three 1x1 convs with LeakyReLU 0.2 and a 1x1 classifier
  on the features (the paper gives no widths: AdaptSegNet's 64 / 128 / 256). With `size`, evaluated at that
  image size: the first conv runs on the features and is upsampled (align_corners) before its LeakyReLU, which
  equals upsampling the features first (bilinear weights sum to 1, so a 1x1 conv commutes with it).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.layers import Conv, leaky_relu, param_dtype, torch_kernel_init
from uda_jax.ops import resize_bilinear


def _conv(features, kernel, stride, padding, name, dtype, dilation=1):
  return Conv(features, kernel, stride=stride, padding=padding, dilation=dilation, use_bias=True,
              kernel_init=torch_kernel_init, dtype=dtype, name=name)


FRONTS = ("none", "aspp")
ASPP_FRONT_DILATIONS = (6, 12, 18, 24)


class FCDiscriminator(nn.Module):
  channels: Sequence[int] = (64, 128, 256, 512)
  dtype: Any = jnp.float32  # compute dtype of the convs; the output (losses' input) is float32 / float64
  front: str = "none"  # none | aspp

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    if self.front == "aspp":
      x = leaky_relu(sum(_conv(self.channels[0], 3, 1, d, f"aspp_{d}", self.dtype, dilation=d)(x)
                         for d in ASPP_FRONT_DILATIONS))
    for i, c in enumerate(self.channels):
      x = leaky_relu(_conv(c, 4, 2, 1, f"conv{i + 1}", self.dtype)(x))
    return _conv(1, 4, 2, 1, "classifier", self.dtype)(x).astype(param_dtype(self.dtype))


class PixelDiscriminator(nn.Module):
  classes_per_domain: int = 19
  width: int = 256  # ndf; the second conv has width // 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, size=None):
    x = leaky_relu(_conv(self.width, 3, 1, 1, "D_0", self.dtype)(x.astype(self.dtype)))
    x = leaky_relu(_conv(self.width // 2, 3, 1, 1, "D_2", self.dtype)(x))
    out = jnp.concatenate([_conv(self.classes_per_domain, 3, 1, 1, name, self.dtype)(x)
                           for name in ("cls1", "cls2")], -1).astype(param_dtype(self.dtype))
    return out if size is None else resize_bilinear(out, tuple(size))



class FeatureDiscriminator(nn.Module):
  channels: Sequence[int] = (64, 128, 256)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, size=None):
    x = _conv(self.channels[0], 1, 1, 0, "conv1", self.dtype)(x.astype(self.dtype))
    if size is not None:
      x = resize_bilinear(x, tuple(size))
    x = leaky_relu(x)
    for i, c in enumerate(self.channels[1:]):
      x = leaky_relu(_conv(c, 1, 1, 0, f"conv{i + 2}", self.dtype)(x))
    return _conv(1, 1, 1, 0, "classifier", self.dtype)(x).astype(param_dtype(self.dtype))
