"""Layers with PyTorch semantics: explicit-padding convs, torch default init, BatchNorm with frozen affine."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uda_jax import switches
from uda_jax.kernels import batch_norm as batch_norm_kernel
from uda_jax.kernels import conv_kernel
from uda_jax.models import conv_forms

# DeepLab's official init: every conv N(0, 0.01) (then overwritten by pretrained weights).
normal_001 = nn.initializers.normal(0.01)
# PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def param_dtype(dtype):
  """Parameters (and BatchNorm statistics) are float32 under float32 and bfloat16 compute, float64 under
  float64 (parity checks against reference code without float32 rounding)."""
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def torch_bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _cpu_rewrite(env: str) -> bool:
  """Whether a CPU-only rewrite applies: on XLA:CPU, unless the environment variable forces it on (1) or off (0)."""
  forced = switches.forced(env)
  return jax.default_backend() == "cpu" if forced is None else forced


def conv1x1_as_matmul() -> bool:
  """Whether unpadded 1x1 convs run as a matmul (Dense1x1): on XLA:CPU, where it is the issue-13 speed-up. On an
  H100 the convolution path measured faster (0.137 s against 0.147 s per AdaptSegNet step, docs/performance.md),
  so accelerators keep nn.Conv. UDA_JAX_CONV1X1_MATMUL=1 / 0 forces either (benchmark ablations)."""
  return _cpu_rewrite("UDA_JAX_CONV1X1_MATMUL")


def cpu_conv_forms() -> tuple[str, ...]:
  """Which of `conv_forms`' rewrites nn.Conv uses: on XLA:CPU 'narrow' (few output channels as a matmul and
  shifted adds) and 'strided' (the input gradient of strided convs as a sub-pixel transposed conv), whose own
  convolutions of those shapes ran several times slower than PyTorch's; accelerators keep XLA's convolution.
  UDA_JAX_NARROW_CONV_MATMUL and UDA_JAX_STRIDED_CONV_S2D =1 / 0 force either (S2D: the strided form's first
  version went through the space-to-depth conv; the name stays so that recorded commands still work); and
  'kernel' (other stride-1 float32 convs as C++ kernels, `uda_jax.kernels.conv_kernel`, UDA_JAX_CONV_KERNEL; with
  'strided', strided convs' forward and weight gradient too)."""
  forms = tuple(f for f, env in (("narrow", "UDA_JAX_NARROW_CONV_MATMUL"), ("strided", "UDA_JAX_STRIDED_CONV_S2D"))
                if _cpu_rewrite(env))
  return forms + ("kernel",) if conv_kernel.enabled() else forms


def conv_transpose_as_subpixel() -> bool:
  """Whether strided transposed convs run as `conv_forms.conv_transpose_subpixel`: on XLA:CPU, whose weight gradient of the
  input-dilated form takes seconds (docs/performance.md); accelerators keep the dilated form, which cuDNN runs as
  its own transposed convolution. UDA_JAX_SUBPIXEL_DECONV=1 / 0 forces either."""
  return _cpu_rewrite("UDA_JAX_SUBPIXEL_DECONV")


class Conv(nn.Module):
  """nn.Conv with PyTorch-style (kernel, stride, padding, dilation) and optional torch-default bias init.

  On a CPU an unpadded 1x1 conv runs as a strided slice and a matrix multiply (`Dense1x1`, same parameters):
  XLA:CPU emits its weight gradient as a whole-image convolution with one input feature, ~18x slower than the
  matmul (issue 13). Accelerators keep the convolution (`conv1x1_as_matmul`). Likewise, on a CPU, convs with few
  output channels and the input gradients of strided convs take faster forms, and other stride-1 convs run as
  C++ kernels (`cpu_conv_forms`).
  """

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  kernel_init: Any = normal_001
  bias_init: Any = None  # None -> torch default U(+-1/sqrt(fan_in))
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1] * self.kernel * self.kernel
    bias_init = self.bias_init or torch_bias_init(fan_in)
    if self.kernel == 1 and self.padding == 0 and conv1x1_as_matmul():
      return Dense1x1(self.features, self.stride, self.use_bias, self.kernel_init, bias_init, self.dtype,
                      name="conv")(x)
    forms = cpu_conv_forms()
    return nn.Conv(
        self.features, (self.kernel, self.kernel), (self.stride, self.stride),
        padding=((self.padding, self.padding), (self.padding, self.padding)),
        kernel_dilation=(self.dilation, self.dilation), use_bias=self.use_bias,
        kernel_init=self.kernel_init, bias_init=bias_init, dtype=self.dtype, param_dtype=param_dtype(self.dtype),
        conv_general_dilated=functools.partial(conv_forms.conv, forms=forms) if forms else None, name="conv")(x)


class Dense1x1(nn.Module):
  """A 1x1 convolution (stride s, no padding) as x[:, ::s, ::s] @ W, with nn.Conv's parameter names, shapes
  ((1, 1, in, out) kernel, bias) and initialisation order, so checkpoints and imported weights are unchanged.
  The weight gradient is the C++ conv kernel's where it applies (`conv_forms.matmul_1x1`)."""

  features: int
  stride: int
  use_bias: bool
  kernel_init: Any
  bias_init: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pdt = param_dtype(self.dtype)
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), pdt)
    bias = self.param("bias", self.bias_init, (self.features,), pdt) if self.use_bias else None
    if self.stride > 1:
      x = x[:, :: self.stride, :: self.stride]
    y = conv_forms.matmul_1x1(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
    return y + bias.astype(self.dtype) if bias is not None else y


class BatchNorm(nn.Module):
  """PyTorch BatchNorm2d whose scale/shift are never trained (the optimizer masks them).

  mode 'batch_stats': as the official AdaptSegNet code runs (`model.train()`): normalise with the batch's
    statistics while training and update the running statistics (momentum 0.1, unbiased variance);
    running statistics at evaluation.
  mode 'frozen': always the running statistics (FrozenBatchNorm; eps=0 reproduces FADA's variant).
  mode 'sync': torch SyncBatchNorm (FADA's self-distillation): batch statistics over the global batch, i.e.
    over every device on `axis_name`; the scale/shift are trained when the optimizer is told so
    (optim.train_bn).
  `axis_name` pmeans the running-statistics update so replicas stay identical; in 'batch_stats' mode the
  normalisation itself uses per-device statistics, as in the 1-image-per-GPU official runs. There, and with the
  running statistics ('frozen', evaluation), on a CPU the statistics, normalisation and gradient run as one C++
  kernel each way (`uda_jax.kernels.batch_norm`). `residual` (added to the output) and `relu` (applied last) are
  the ResNet's `relu(bn(x) + residual)` and `relu(bn(x))`, which the kernel computes in the same pass (separate
  passes cost the CPU step ~1 s).
  """

  mode: str = "batch_stats"
  eps: float = 1e-5
  momentum: float = 0.1
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool, residual=None, relu: bool = False):
    if self.mode not in ("batch_stats", "frozen", "sync"):
      raise ValueError(f"model.bn_mode must be 'batch_stats', 'frozen' or 'sync', got {self.mode!r}")
    c = x.shape[-1]
    dt = param_dtype(x.dtype)  # statistics, affine and the normalisation in float32 even under bfloat16
    scale = self.param("scale", nn.initializers.ones, (c,), dt)
    bias = self.param("bias", nn.initializers.zeros, (c,), dt)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), dt))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), dt))
    x32 = x.astype(dt)
    sync = self.mode == "sync" and self.axis_name is not None and not self.is_initializing()
    y = None
    # XLA:CPU: one C++ pass each way (issue 13). It adds the residual only where float32 is the compute dtype and
    # the shapes match (as below; under bfloat16 or a broadcast the add stays there); the ReLU commutes with the
    # rounding to bfloat16.
    fused = residual is None or (x.dtype == residual.dtype == jnp.float32 and residual.shape == x.shape)
    kernel = dt == jnp.float32 and not sync and batch_norm_kernel.enabled() and functools.partial(
        batch_norm_kernel.batch_norm, x32, scale, bias, self.eps, residual if fused else None, relu and fused)
    fused = bool(kernel) and fused
    if train and self.mode in ("batch_stats", "sync"):
      n = x.size // c
      if sync:  # global mean and variance from per-device first and second moments
        mean, sq = jax.lax.pmean((x32.mean((0, 1, 2)), jnp.square(x32).mean((0, 1, 2))), self.axis_name)
        var = jnp.maximum(sq - jnp.square(mean), 0.0)
        n *= jax.lax.psum(1, self.axis_name)
      elif kernel:
        y, mean, var = kernel()
      else:
        mean = x32.mean((0, 1, 2))
        var = jnp.square(x32 - mean).mean((0, 1, 2))
      if not self.is_initializing():
        new_mean = jax.lax.stop_gradient(mean)
        new_var = jax.lax.stop_gradient(var) * n / jnp.maximum(n - 1, 1)
        if self.axis_name is not None and not sync:
          new_mean, new_var = jax.lax.pmean((new_mean, new_var), self.axis_name)
        ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * new_mean
        ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * new_var
    else:
      mean, var = ra_mean.value, ra_var.value
      if kernel:
        y = kernel(stats=(mean, var))[0]
    if y is None:
      y = (x32 - mean) * (jax.lax.rsqrt(var + self.eps) * scale) + bias
    y = y.astype(x.dtype)
    if fused:
      return y
    if residual is not None:
      y = y + residual
    return nn.relu(y) if relu else y


def max_pool(x, kernel: int = 3, stride: int = 2, padding: int = 1, ceil_mode: bool = False):
  """PyTorch MaxPool2d, including ceil_mode (the Caffe DeepLab stem uses it)."""

  def out_size(n):
    span = n + 2 * padding - kernel
    o = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (o - 1) * stride >= n + padding:  # last window must start inside the input
      o -= 1
    return o

  pads = [(padding, (out_size(n) - 1) * stride + kernel - n - padding) for n in x.shape[1:3]]
  # Rows no window reaches (floor mode) are cut, not negatively padded (whose gradient XLA rejects).
  x = x[:, :x.shape[1] + min(pads[0][1], 0), :x.shape[2] + min(pads[1][1], 0)]
  pads = [(lo, max(hi, 0)) for lo, hi in pads]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1),
                               ((0, 0), *pads, (0, 0)))


def leaky_relu(x):
  return nn.leaky_relu(x, 0.2)




def bilinear_kernel(key, shape, dtype=jnp.float32):
  """Kernel (k, k, C, C) that upsamples each channel bilinearly (torchfcn `get_upsampling_weight`)."""
  del key
  k, _, c_in, c_out = shape
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  f = 1 - np.abs(np.arange(k) - center) / factor
  w = np.zeros(shape, np.float32)
  diag = np.arange(min(c_in, c_out))
  w[:, :, diag, diag] = np.outer(f, f)[..., None]
  return jnp.asarray(w, dtype)


class ConvTranspose(nn.Module):
  """PyTorch ConvTranspose2d(C, features, k, stride, padding, bias=use_bias) (output_padding 0).

  Param 'kernel' is (kh, kw, in, out) = torch weight (in, out, kh, kw).transpose(2, 3, 0, 1); output size
  (n - 1) * stride - 2 * padding + k as torch's. On accelerators the op is a conv over the stride-dilated input
  (`conv_transpose_dilated`), on XLA:CPU its sub-pixel form (`conv_forms.conv_transpose_subpixel`: same sums,
  s^2 fewer FLOPs). `frozen` stops its gradient (FCN-8s's bilinear upsamplers); defaults are FCN-8s's (bilinear
  kernel, no bias).
  """

  features: int
  kernel: int
  stride: int
  frozen: bool = True
  dtype: Any = jnp.float32
  padding: int = 0
  use_bias: bool = False
  kernel_init: Any = bilinear_kernel
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k, pdt = self.kernel, param_dtype(self.dtype)
    w = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), pdt)
    if self.frozen:
      w = jax.lax.stop_gradient(w)
    x, w = x.astype(self.dtype), w.astype(self.dtype)
    if self.stride > 1 and conv_transpose_as_subpixel():
      y = conv_forms.conv_transpose_subpixel(x, w, self.stride, self.padding)
    else:
      y = conv_transpose_dilated(x, w, self.stride, self.padding)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), pdt).astype(self.dtype)
    return y


def conv_transpose_dilated(x, w, s: int, p: int):
  """torch conv_transpose2d(x, w, stride s, padding p) as a conv over the s-dilated input with the flipped kernel
  and (k - 1 - p) padding (negative = cropped)."""
  pad = w.shape[0] - 1 - p
  return jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((pad, pad), (pad, pad)), lhs_dilation=(s, s),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
