"""The weight gradient of stride-1 convolutions on XLA:CPU as a C++ kernel (issue 13).

XLA:CPU (jaxlib 0.10.2) emits a convolution's weight gradient as a convolution over the whole image with one input
feature: on the ResNet's 3x3 convs 40-150 GFLOP/s, where PyTorch's oneDNN reaches 180-200 and the forward and
input gradient run close to PyTorch's (docs/performance.md). `conv_wgrad_cpu.cc` computes it as one matrix
product per tap over the pixels, at 190-220 GFLOP/s on those shapes on a 2-core AVX-512 machine.

`conv_forms.conv` uses it (form 'wgrad') for float32 stride-1 convs whose output channels are a multiple of 16, on
a CPU backend; the forward and the input gradient stay XLA's. UDA_JAX_CONV_WGRAD_KERNEL=0 turns it off; =1 makes
a failed build an error instead of a warning and a fallback. Its results differ from XLA's by float32 rounding of
another summation order (tests/test_conv_forms.py).
"""

import functools

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from uda_jax import parallel
from uda_jax.kernels import build

ENV = "UDA_JAX_CONV_WGRAD_KERNEL"
_TARGET = "uda_conv_weight_grad"


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernel once per process: None on success, else why it is unavailable."""
  return build.register("conv_wgrad_cpu.cc", {_TARGET: "UdaConvWeightGrad"})


@functools.cache
def _warn_fallback(why: str):
  logging.warning("The CPU conv weight-gradient kernel is unavailable, so training uses XLA's slower weight "
                  "gradients (docs/performance.md); %s=0 silences this. %s", ENV, why)


def enabled() -> bool:
  """Whether stride-1 float32 conv weight gradients run as the kernel: on a CPU backend, when it builds."""
  return build.use_kernel(ENV, "the CPU conv weight-gradient kernel", _load, _warn_fallback)


def supports(x_dtype, w_shape) -> bool:
  """The kernel's own limits: float32, output channels a multiple of 16 (its register tiles' width)."""
  return jnp.dtype(x_dtype) == jnp.float32 and w_shape[3] % 16 == 0


def weight_grad(x, dy, kernel_size, dilation, padding_lo):
  """dw (KH, KW, C_in, C_out) of the stride-1 NHWC conv y = conv(x, w) with rhs dilation `dilation` and low
  padding `padding_lo` (the high padding is implied by dy's size), from x (N, H, W, C_in) and dy (N, OH, OW, C_out)."""
  why_not = _load()
  if why_not is not None:
    raise build.BuildError(why_not)
  (kh, kw), (dh, dw), (ph, pw) = kernel_size, dilation, padding_lo
  out = jax.ShapeDtypeStruct((kh, kw, x.shape[-1], dy.shape[-1]), jnp.float32)
  grad = jax.ffi.ffi_call(_TARGET, out)(x, dy, dil_h=np.int64(dh), dil_w=np.int64(dw), pad_top=np.int64(ph),
                                        pad_left=np.int64(pw))
  return parallel.vary_like(x, grad)[0]
