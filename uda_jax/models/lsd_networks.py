"""LSD-seg's generator G and 4-way patch discriminator D (swamiviv/LSD-seg `models/fcn8s_LSD.py: _netG, _netD`).

G reconstructs the image from FCN-8s's fc7, pool4 and pool3 through transposed convs, each followed by
InstanceNorm (no affine) + ReLU and two residual blocks, and a final ConvTranspose(k8, s2, p100) + sigmoid whose
padding undoes conv1_1's pad of 100 (at 320x640 the output is exactly 320x640; `generator_output_size`).
D: Conv(k4, s2, p2) + InstanceNorm + LeakyReLU 0.2, three groups of three residual blocks (bias, LeakyReLU)
separated by 2x2 max pools, then two 3x3 heads on the patch grid: 4-way domain (source-real 0, source-fake 1,
target-real 2, target-fake 3) and K-way auxiliary labelling. Residual block = x + Dropout(0.5)(act(IN(conv3x3(x))))
with element-wise dropout, in G and D alike (both run in train mode officially). Convs (transposed included)
N(0, 0.02), biases U(-0.01, 0.01) (`util_fns.weights_init`). Dropout needs a 'dropout' rng when training.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from uda_jax.models.layers import Conv, ConvTranspose, leaky_relu, max_pool, param_dtype

normal_002 = nn.initializers.normal(0.02)


def uniform_001(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -0.01, 0.01)


def instance_norm(x, eps: float = 1e-5):
  """torch InstanceNorm2d(affine=False): per image and channel over H, W, biased variance; float32 math."""
  x32 = x.astype(param_dtype(x.dtype))
  mean = x32.mean((1, 2), keepdims=True)
  var = jnp.square(x32 - mean).mean((1, 2), keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class ResBlock(nn.Module):
  use_bias: bool
  act: Any
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    h = Conv(x.shape[-1], 3, padding=1, use_bias=self.use_bias, kernel_init=normal_002, bias_init=uniform_001,
             dtype=self.dtype, name="conv")(x)
    h = nn.Dropout(self.dropout, deterministic=not train)(self.act(instance_norm(h)))
    return x + h


class Generator(nn.Module):
  """G(fc7, pool4, pool3) -> image in [0, 1] (the D input's channel order), float32. `width` = ngf (64)."""

  width: int = 64
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, fc7, pool4, pool3, train: bool = False):
    f = self.width

    def up(h, c, k, s, p, name):
      h = ConvTranspose(c, k, s, frozen=False, padding=p, kernel_init=normal_002, dtype=self.dtype, name=name)(h)
      h = nn.relu(instance_norm(h))
      for i in range(2):
        h = ResBlock(False, nn.relu, self.dropout, self.dtype, name=f"{name}_res{i}")(h, train)
      return h

    cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=-1)
    h = up(fc7.astype(self.dtype), 4 * f, 7, 1, 0, "stage1_up0")
    h = up(h, 8 * f, 3, 2, 1, "stage1_up1")
    h = up(cat(h, pool4), 4 * f, 3, 2, 1, "stage2_up0")
    h = up(cat(h, pool3), 2 * f, 5, 2, 2, "stage3_up0")
    h = up(h, f, 5, 2, 2, "stage3_up1")
    h = ConvTranspose(3, 8, 2, frozen=False, padding=100, use_bias=True, kernel_init=normal_002,
                      bias_init=uniform_001, dtype=self.dtype, name="stage4_up")(h)
    return jax.nn.sigmoid(h.astype(param_dtype(self.dtype)))


class PatchDiscriminator(nn.Module):
  """D(image) -> {'domain': [N, h, w, 4] logits, 'aux': [N, h, w, num_classes] logits} (float32).

  `width` = 2 ndf (128); `aux_head` False drops the labelling head (Table 4's "w/o auxiliary loss"); `patch`
  False averages the domain logits over the grid to one 4-way prediction per image [N, 1, 1, 4] (Table 4's
  "w/o Patch Discriminator": "a regular GAN-like discriminator"), the labelling head staying on the grid.
  """

  num_classes: int = 19
  width: int = 128
  dropout: float = 0.5
  aux_head: bool = True
  patch: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda c, k, s, p, name: Conv(c, k, s, p, use_bias=True, kernel_init=normal_002, bias_init=uniform_001,
                                         dtype=self.dtype, name=name)
    h = leaky_relu(instance_norm(conv(self.width, 4, 2, 2, "conv0")(x.astype(self.dtype))))
    for g in range(3):
      if g:
        h = max_pool(h, 2, 2, 0)
      for i in range(3):
        h = ResBlock(True, leaky_relu, self.dropout, self.dtype, name=f"res{g}_{i}")(h, train)
    f32 = lambda t: t.astype(param_dtype(self.dtype))
    domain = f32(conv(4, 3, 1, 1, "out_s")(h))
    out = {"domain": domain if self.patch else domain.mean((1, 2), keepdims=True)}
    if self.aux_head:
      out["aux"] = f32(conv(self.num_classes, 3, 1, 1, "out_c")(h))
    return out


def fcn8s_sizes(h: int, w: int) -> dict[str, tuple[int, int]]:
  """Spatial sizes of FCN-8s's maps for an (h, w) input (conv1_1 pad 100, ceil-mode pools, fc6 7x7 valid)."""
  sizes, size = {}, (h + 198, w + 198)  # conv1_1: + 2 * 100 - 3 + 1
  for stage in range(1, 6):
    size = tuple(-(-n // 2) for n in size)  # ceil-mode 2x2 pools: ceil(n / 2)
    sizes[f"pool{stage}"] = size
  sizes["fc7"] = tuple(n - 6 for n in sizes["pool5"])
  return sizes


def generator_output_size(h: int, w: int) -> tuple[int, int]:
  """G's output size for an (h, w) FCN-8s input: the transposed convs' (n - 1) s - 2 p + k from fc7, which
  must meet pool4 and pool3 exactly for the concatenations."""
  t = lambda n, k, s, p: (n - 1) * s - 2 * p + k
  sizes = fcn8s_sizes(h, w)
  out = []
  for axis in range(2):
    n = t(t(sizes["fc7"][axis], 7, 1, 0), 3, 2, 1)
    if n != sizes["pool4"][axis]:
      return None
    n = t(n, 3, 2, 1)
    if n != sizes["pool3"][axis]:
      return None
    out.append(t(t(t(n, 5, 2, 2), 5, 2, 2), 8, 2, 100))
  return tuple(out)


def discriminator_grid(h: int, w: int) -> tuple[int, int]:
  """D's patch grid for an (h, w) image: conv k4 s2 p2, then two floor-mode 2x2 pools."""
  return tuple(((n + 4 - 4) // 2 + 1) // 2 // 2 for n in (h, w))
