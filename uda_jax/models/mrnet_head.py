"""MRNet's decoder (Zheng & Yang, "Unsupervised Scene Adaptation with Memory Regularization in vivo", IJCAI 2020),
as layumi/Seg-Uncertainty model/deeplab_multi.py builds it (Classifier_Module).

  branches   1x1 conv and 3x3 convs at dilations 6 / 12 / 18 / 24, each to `width` (256) channels + norm + ReLU
  fuse       concatenated -> [SE block] -> 3x3 conv to 2 * width (512) + norm   (no ReLU after it, as run)
  classify   Dropout2d(rate) -> 1x1 conv to classes, no bias, N(0, 0.001)
Initialisation as run: the official init loop walks the branch Sequentials, never a Conv2d, so branch convs
keep PyTorch's default init; the fuse conv is kaiming_normal (fan_in) with zero bias; norms 1 / 0.
Norm 'gn' is GroupNorm(32) (the published command's --norm-style gn), 'bn' our BatchNorm in the model's mode.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from uda_jax.models.layers import BatchNorm, Conv, param_dtype, torch_bias_init, torch_kernel_init

NORMS = ("gn", "bn")
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class SEBlock(nn.Module):
  """Squeeze-and-excitation (--use-se): channel gates from the global average, Linear C -> C/16 -> C."""

  reduction: int = 16

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    dense = lambda n, fan_in, name: nn.Dense(n, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in),
                                             param_dtype=param_dtype(x.dtype), name=name)
    g = jnp.mean(x.astype(param_dtype(x.dtype)), axis=(1, 2))
    g = nn.sigmoid(dense(c, c // self.reduction, "fc2")(nn.relu(dense(c // self.reduction, c, "fc1")(g))))
    return x * g[:, None, None, :].astype(x.dtype)


class MRNetHead(nn.Module):
  num_classes: int
  width: int = 256
  dilations: tuple = (6, 12, 18, 24)
  norm: str = "gn"
  se: bool = False
  dropout: float = 0.1
  bn: dict = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.norm not in NORMS:
      raise ValueError(f"model.head_norm must be one of {NORMS}, got {self.norm!r}")

    def norm(y, name):
      if self.norm == "bn":
        return BatchNorm(**(self.bn or {}), name=name)(y, train)
      pdt = param_dtype(self.dtype)
      return nn.GroupNorm(32, epsilon=1e-5, dtype=pdt, param_dtype=pdt, name=name)(y.astype(pdt)).astype(y.dtype)

    branches = []
    for i, d in enumerate((0, *self.dilations)):
      k, pad = (1, 0) if d == 0 else (3, d)
      y = Conv(self.width, k, padding=pad, dilation=max(d, 1), use_bias=True, kernel_init=torch_kernel_init,
               dtype=self.dtype, name=f"branch_{i}")(x)
      branches.append(nn.relu(norm(y, f"branch_{i}_norm")))
    y = jnp.concatenate(branches, axis=-1)
    if self.se:
      y = SEBlock(name="se")(y)
    y = Conv(2 * self.width, 3, padding=1, use_bias=True, kernel_init=kaiming_fan_in,
             bias_init=nn.initializers.zeros, dtype=self.dtype, name="fuse")(y)
    y = norm(y, "fuse_norm")
    # Dropout2d: whole channels of an image, drawn from the step's 'dropout' rng
    y = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(y)
    return Conv(self.num_classes, 1, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                name="classifier")(y)
