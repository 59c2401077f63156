"""Convolutions on XLA:CPU as C++ kernels: forward, input (stride 1) and weight gradient (issue 13).

XLA:CPU (jaxlib 0.10.2) emits a convolution's weight gradient as a convolution over the whole image with one input
feature: on the ResNet's 3x3 convs 40-140 GFLOP/s, where PyTorch's oneDNN reaches 180-200; its forward and input
gradient run 10-20% behind oneDNN's (docs/performance.md). `conv_cpu.cc` computes each tap as a matrix product
over the pixels with AVX-512-sized register tiles (190-220 GFLOP/s for the weight gradient on those shapes on a
2-core machine). The input gradient is the forward kernel on dy with the flipped, transposed kernel.

`conv_forms.conv` uses them (form 'kernel') for float32 stride-1 convs whose output channels are a multiple of 16,
on a CPU backend; the input gradient goes through the kernel too where the input channels are (else XLA's). For
strided convs (form 'strided') they compute the forward and the weight gradient; the input gradient is then a
sub-pixel transposed conv, itself a stride-1 conv.
UDA_JAX_CONV_KERNEL=0 turns them off; =1 makes a failed build an error instead of a warning and a fallback.
Results differ from XLA's by float32 rounding of another summation order (tests/test_conv_forms.py); each output
element is summed by one thread in a fixed order, so they do not depend on the thread count.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax import parallel
from uda_jax.kernels import build

ENV = "UDA_JAX_CONV_KERNEL"
_FORWARD = "uda_conv_forward"
_WEIGHT_GRAD = "uda_conv_weight_grad"


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels once per process: None on success, else why they are unavailable."""
  return build.register("conv_cpu.cc", {_FORWARD: "UdaConvForward", _WEIGHT_GRAD: "UdaConvWeightGrad"})


def enabled() -> bool:
  """Whether float32 convs (and 1x1 weight gradients) run as the kernels: on a CPU backend, when they build."""
  return build.use_kernel(ENV, "the CPU conv kernels", "XLA's slower convolutions", _load)


def supports(dtype, channels: int) -> bool:
  """The kernels' own limits for a result with `channels` channels: float32, a multiple of 16 (a tile's width)."""
  return jnp.dtype(dtype) == jnp.float32 and channels % 16 == 0


def _call(name, out_shape, a, b, stride, dilation, padding_lo, **attrs):
  why_not = _load()
  if why_not is not None:
    raise build.BuildError(why_not)
  (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding_lo
  out = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(out_shape, jnp.float32))(
      a, b, str_h=np.int64(sh), str_w=np.int64(sw), dil_h=np.int64(dh), dil_w=np.int64(dw), pad_top=np.int64(ph),
      pad_left=np.int64(pw), **{k: np.int64(v) for k, v in attrs.items()})
  return parallel.vary_like(a, out)[0]


def forward(x, w, dilation, padding_lo, out_size, stride=(1, 1), flip=False):
  """The NHWC conv of x (N, H, W, C_in) with the HWIO kernel w, window stride `stride`, rhs dilation `dilation`,
  low padding `padding_lo` and output (H', W') `out_size` (the high padding implied). `flip`: use
  w[::-1, ::-1].transpose(0, 1, 3, 2) instead (the kernel rearranges it)."""
  c_out = w.shape[2 if flip else 3]
  return _call(_FORWARD, (x.shape[0], *out_size, c_out), x, w, stride, dilation, padding_lo, flip=flip)


def input_grad(dy, w, dilation, padding_lo, in_size):
  """dx of a stride-1 conv: the forward on dy with the kernel flipped and its channels swapped (by the kernel:
  XLA's copy for it ran at ~1 GB/s), low padding (k - 1) d - p."""
  kh, kw = w.shape[:2]
  pad = ((kh - 1) * dilation[0] - padding_lo[0], (kw - 1) * dilation[1] - padding_lo[1])
  return forward(dy, w, dilation, pad, in_size, flip=True)


def weight_grad(x, dy, kernel_size, dilation, padding_lo, stride=(1, 1)):
  """dw (KH, KW, C_in, C_out) of that conv from x (N, H, W, C_in) and dy (N, H', W', C_out)."""
  return _call(_WEIGHT_GRAD, (*kernel_size, x.shape[-1], dy.shape[-1]), x, dy, stride, dilation, padding_lo)
