"""Convolutions in the forms XLA:CPU runs fastest (issue 13); same parameters, same sums.

Two shapes of the AdaptSegNet step ran far below the CPU's peak in XLA:CPU's own form (docs/performance.md):

Narrow convs (`shifted_matmul_conv`): DeepLab's ASPP classifiers are 3x3 convs from 2048 (or 1024) channels to
the 19 classes, dilated 6-24. Written as

  Z = X W            X: pixels x C_in, W: C_in x (k*k*C_out), the taps side by side
  y[o] = sum_(i,j) Z[o - p + (i, j) d, (i, j)]      (zero where a tap reads padding)

the forward is one GEMM and k*k shifted adds of C_out-channel maps, and autodiff makes both gradients one GEMM
each on the shifted copies of dy (pixels x k*k*C_out): dX = dZ W^T, dW = X^T dZ. Used where k*k*C_out <= C_in
(the copies no larger than x); for the ResNet's own 3x3 convs it measured slower.

Strided convs (`strided_conv`): the input gradient of a stride-s conv is a conv over the s-dilated output
gradient, which XLA:CPU runs through a slow generic path (the discriminators' 4x4 stride-2 convs: up to 250 ms
against PyTorch's 12). It is taken in sub-pixel form (`conv_transpose_subpixel`: each of the s x s phases of the
input a stride-1 conv of the undilated output gradient), which runs like any other stride-1 conv. The forward and
weight gradient are the C++ kernels' where 'kernel' applies too (float32, output channels a multiple of 16), else
XLA's. (The whole conv in space-to-depth form, the forward's counterpart, measured slower: its weight gradient is.)

Other stride-1 convs (`kernel_conv`, float32, output channels a multiple of 16): the C++ kernels of
uda_jax/kernels/conv_kernel.py for the forward, the weight gradient (which XLA:CPU runs at a third to a half of
PyTorch's speed on the ResNet's 3x3 convs) and, where the input channels are a multiple of 16, the input gradient.

Strided transposed convs (FCN-8s's upsamplers, LSD-seg's generator) use `conv_transpose_subpixel` on a CPU too
(layers.ConvTranspose).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax import parallel
from uda_jax.kernels import conv_kernel

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_2d(x_shape, w_shape, padding, lhs_dilation, dimension_numbers, feature_group_count) -> bool:
  """An NHWC/HWIO conv with explicit padding, no input dilation and no groups: the forms below handle these.
  (dimension_numbers None is lax's default, NCHW/OIHW.)"""
  return (len(x_shape) == 4 and not isinstance(padding, str) and all(d == 1 for d in (lhs_dilation or (1, 1)))
          and feature_group_count == 1
          and jax.lax.conv_dimension_numbers(x_shape, w_shape, dimension_numbers)
          == jax.lax.conv_dimension_numbers(x_shape, w_shape, _NHWC))


def form(x_shape, w_shape, strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1) -> str | None:
  """'narrow', 'strided', 'kernel' or None (XLA's convolution) for a conv of these arguments."""
  if not _plain_2d(x_shape, w_shape, padding, lhs_dilation, dimension_numbers, feature_group_count):
    return None
  kh, kw, c_in, c_out = w_shape
  s = tuple(strides)
  if s == (1, 1):
    return "narrow" if kh * kw > 1 and kh * kw * c_out <= c_in else "kernel"
  return "strided" if s[0] == s[1] and all(d == 1 for d in (rhs_dilation or (1, 1))) else None


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, precision=None, *, forms=("narrow", "strided", "kernel"), **kwargs):
  """lax.conv_general_dilated (the signature nn.Conv calls) in the `form` of its arguments, if that is in `forms`."""
  which = None if kwargs else form(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                                   dimension_numbers, feature_group_count)
  if which == "narrow" and which in forms:
    return shifted_matmul_conv(lhs, rhs, padding, tuple(rhs_dilation or (1, 1)), precision)
  if which == "strided" and which in forms:
    rhs, = parallel.vary_like(lhs, rhs)  # an unmapped kernel's gradient is then summed over devices
    kernel = "kernel" in forms and _kernel_applies(lhs, rhs, padding, None, window_strides[0])
    return strided_conv(lhs, rhs, window_strides[0], tuple(tuple(int(v) for v in p) for p in padding), precision,
                        kernel)
  if which == "kernel" and which in forms and _kernel_applies(lhs, rhs, padding, rhs_dilation):
    rhs, = parallel.vary_like(lhs, rhs)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    return kernel_conv(lhs, rhs, tuple(tuple(int(v) for v in p) for p in padding), dilation, precision)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count, precision=precision, **kwargs)


def shifted_matmul_conv(x, w, padding, dilation, precision=None):
  """Stride-1 NHWC conv with HWIO kernel w and explicit padding ((lo, hi), (lo, hi)), as in the module doc."""
  kh, kw, c_in, c_out = w.shape
  n, h, wd, _ = x.shape
  (ph, ph_hi), (pw, pw_hi) = padding
  oh, ow = h + ph + ph_hi - (kh - 1) * dilation[0], wd + pw + pw_hi - (kw - 1) * dilation[1]
  taps = w.transpose(2, 0, 1, 3).reshape(c_in, kh * kw * c_out)
  # float32 products and sums under bfloat16, as XLA's convolution accumulates
  z = jnp.einsum("nhwc,ck->nhwk", x, taps, precision=precision,
                 preferred_element_type=jnp.promote_types(x.dtype, jnp.float32)).reshape(n, h, wd, kh * kw, c_out)
  zero = jnp.zeros((), z.dtype)
  y = 0
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    # y[o] += z[o + tap offset - padding]: pad by the negated shift (negative pads crop) to the output size.
    lo_h, lo_w = ph - i * dilation[0], pw - j * dilation[1]
    y = y + jax.lax.pad(z[:, :, :, t], zero, ((0, 0, 0), (lo_h, oh - h - lo_h, 0), (lo_w, ow - wd - lo_w, 0),
                                              (0, 0, 0)))
  return y.astype(x.dtype)


def _xla_conv(x, w, s, padding, precision):
  return jax.lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def strided_conv(x, w, s, padding, precision=None, kernel=False):
  """A stride-s NHWC conv: the forward and weight gradient the C++ kernels' (`kernel`) or XLA's, the input
  gradient by `conv_transpose_subpixel` (its stride-1 conv the kernels' where they apply)."""
  return _strided_forward(x, w, s, padding, precision, kernel)[0]


def _strided_forward(x, w, s, padding, precision, kernel):
  if kernel:
    lows = tuple(lo for lo, _ in padding)
    y = conv_kernel.forward(x, w, (1, 1), lows, _out_size(x, w, padding, (1, 1), s), (s, s))
  else:
    y = _xla_conv(x, w, s, padding, precision)
  return y, (x, w)


def _strided_backward(s, padding, precision, kernel, residuals, dy):
  x, w = residuals
  lows = tuple(lo for lo, _ in padding)
  # dx[i] = sum over o s + t = i + lo of dy[o] w[t]: the transposed conv (HWIO kernel with I and O swapped),
  # cropped by the low padding to x's size (zero where no window reached)
  dx = conv_transpose_subpixel(dy, w.transpose(0, 1, 3, 2), s, lows, x.shape[1:3], precision,
                               forms=("kernel",) if kernel else ())
  if kernel:
    dw = conv_kernel.weight_grad(x, dy, w.shape[:2], (1, 1), lows, (s, s))
  else:
    dw = jax.vjp(lambda w: _xla_conv(x, w, s, padding, precision), w)[1](dy)[0]
  return dx, dw


strided_conv.defvjp(_strided_forward, _strided_backward)


def _kernel_applies(x, w, padding, dilation, stride=1) -> bool:
  """Whether the C++ kernels take this conv: enabled (a CPU backend), their dtype and channels, matching
  channels and a non-empty output; anything else goes to XLA, whose own checks then name a mistake."""
  dilation = tuple(dilation or (1, 1))
  return (x.dtype == w.dtype and x.shape[3] == w.shape[2] and all(d >= 1 for d in dilation) and stride >= 1
          and all(n > 0 for n in _out_size(x, w, padding, dilation, stride))
          and conv_kernel.supports(x.dtype, w.shape[3]) and conv_kernel.enabled())


def _dilated_conv(x, w, padding, dilation, precision):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def kernel_conv(x, w, padding, dilation, precision=None):
  """A stride-1 NHWC conv whose forward and gradients are the C++ kernels (the input gradient XLA's where the
  input channels are no multiple of 16). `precision` reaches only XLA's part: the kernels sum float32 products in
  float32, which is what every precision means for float32 on XLA:CPU."""
  return _kernel_forward(x, w, padding, dilation, precision)[0]


def _out_size(x, w, padding, dilation, stride=1):
  return tuple((n + lo + hi - (k - 1) * d - 1) // stride + 1
               for n, (lo, hi), k, d in zip(x.shape[1:3], padding, w.shape[:2], dilation))


def _kernel_forward(x, w, padding, dilation, precision):
  lows = tuple(lo for lo, _ in padding)
  return conv_kernel.forward(x, w, dilation, lows, _out_size(x, w, padding, dilation)), (x, w)


def _kernel_backward(padding, dilation, precision, residuals, dy):
  x, w = residuals
  lows = tuple(lo for lo, _ in padding)
  if conv_kernel.supports(x.dtype, x.shape[3]):
    dx = conv_kernel.input_grad(dy, w, dilation, lows, x.shape[1:3])
  else:
    dx = jax.vjp(lambda x: _dilated_conv(x, w, padding, dilation, precision), x)[1](dy)[0]
  return dx, conv_kernel.weight_grad(x, dy, w.shape[:2], dilation, lows)


kernel_conv.defvjp(_kernel_forward, _kernel_backward)


def matmul_1x1(x, w):
  """x (N, H, W, C_in) @ w (C_in, C_out), an unpadded stride-1 1x1 conv as `layers.Dense1x1` runs it on a CPU,
  with its weight gradient x^T dy the C++ weight-gradient kernel's where that applies (float32, C_out a multiple
  of 16, enabled): XLA:CPU transposes dy into a copy before its own dot for it."""
  if not (x.dtype == w.dtype and x.shape[3] == w.shape[0] and x.size > 0
          and conv_kernel.supports(x.dtype, w.shape[1]) and conv_kernel.enabled()):
    return jnp.einsum("nhwc,cd->nhwd", x, w)
  w, = parallel.vary_like(x, w)
  return _kernel_matmul(x, w)


@jax.custom_vjp
def _kernel_matmul(x, w):
  return jnp.einsum("nhwc,cd->nhwd", x, w)


def _kernel_matmul_forward(x, w):
  return jnp.einsum("nhwc,cd->nhwd", x, w), (x, w)


def _kernel_matmul_backward(residuals, dy):
  x, w = residuals
  return jnp.einsum("nhwd,cd->nhwc", dy, w), conv_kernel.weight_grad(x, dy, (1, 1), (1, 1), (0, 0))[0, 0]


_kernel_matmul.defvjp(_kernel_matmul_forward, _kernel_matmul_backward)


def conv_transpose_subpixel(x, w, s: int, p, size=None, precision=None, forms=()):
  """torch conv_transpose2d(x, w, stride s, padding p) for an HWIO kernel w (torch's (in, out, kh, kw) weight
  transposed (2, 3, 0, 1)) without multiplying inserted zeros. p: an int or (p_h, p_w), the rows cropped from
  the start of the full output (n - 1) s + k; size: the output's (H, W), default torch's (n - 1) s - 2 p + k
  (beyond the full output the rows are zero).

  Output pixel o = q s + r - p (phase r) sums x[q - m] W[m s + r] over m < ceil(k / s), so each of the s x s
  phases is a stride-1 conv of the undilated input with a ceil(k / s)-tap sub-kernel. One conv computes all
  phases (stacked on the output channels), a depth-to-space interleaves them and a slice applies the padding:
  s^2 fewer FLOPs than the dilated form, and a weight gradient XLA:CPU runs like any conv's (the dilated form's
  took 0.5-10 s per layer of LSD-seg's generator at 320x640). `forms`: those of `conv` for that stride-1 conv."""
  kh, kw, c_in, c_out = w.shape
  mh, mw = -(-kh // s), -(-kw // s)
  pad_h, pad_w = (p, p) if np.ndim(p) == 0 else p
  size = size or ((x.shape[1] - 1) * s - 2 * pad_h + kh, (x.shape[2] - 1) * s - 2 * pad_w + kw)
  w = jnp.pad(w, ((0, mh * s - kh), (0, mw * s - kw), (0, 0), (0, 0)))
  # [mh, rh, mw, rw, in, out] -> [mh, mw, in, (rh, rw, out)], flipped: the correlation sums x[q - m].
  w = w.reshape(mh, s, mw, s, c_in, c_out).transpose(0, 2, 4, 1, 3, 5).reshape(mh, mw, c_in, s * s * c_out)
  w = w[::-1, ::-1]
  crop, pads, window = [], [], []
  for n, m, pad, out in zip(x.shape[1:3], (mh, mw), (pad_h, pad_w), size):
    q0, q1 = pad // s, (out - 1 + pad) // s  # the phase rows that reach the output
    lo, hi = m - 1 - q0, q1 - (n - 1)  # input rows needed before 0 / after n - 1 (negative: rows unused)
    crop.append(slice(max(-lo, 0), n - max(-hi, 0)))
    pads.append((max(lo, 0), max(hi, 0)))
    window.append(slice(pad - q0 * s, pad - q0 * s + out))
  y = conv(x[:, crop[0], crop[1]], w, (1, 1), pads, dimension_numbers=_NHWC, precision=precision, forms=forms)
  b, qh, qw, _ = y.shape
  y = y.reshape(b, qh, qw, s, s, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(b, qh * s, qw * s, c_out)
  return y[:, window[0], window[1]]
