"""Small array ops shared by models, losses and evaluation."""

import jax
import jax.numpy as jnp
import numpy as np


def _interp_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] linear-interpolation weights with align_corners=True (PyTorch semantics)."""
  if size_out == 1:
    src = np.zeros(1)
  else:
    src = np.arange(size_out) * ((size_in - 1) / (size_out - 1))
  lo = np.clip(np.floor(src).astype(np.int64), 0, size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo
  m = np.zeros((size_out, size_in), np.float64)  # cast to the input dtype by the caller
  np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(size_out), hi), frac)
  return m


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size` = (H, W) with align_corners=True.

  The official PyTorch code upsamples this way everywhere; jax.image.resize is half-pixel. Written as one
  interpolation matrix per axis, which XLA turns into two small matmuls.
  """
  h_in, w_in = x.shape[1:3]
  h_out, w_out = size
  if (h_in, w_in) == (h_out, w_out):
    return x
  mh = jnp.asarray(_interp_matrix(h_in, h_out), x.dtype)
  mw = jnp.asarray(_interp_matrix(w_in, w_out), x.dtype)
  x = jnp.einsum("oh,nhwc->nowc", mh, x)
  return jnp.einsum("pw,nowc->nopc", mw, x)
