"""Losses shared by every scheme.

Each returns a per-device value whose mean over the 'data' axis is the loss of the global batch, so
`lax.pmean` of the per-device gradients is the gradient of the global-batch loss on any device count.
"""

import jax
import jax.numpy as jnp
import optax

from uda_jax.ops import resize_bilinear

IGNORE = 255
SOURCE, TARGET = 0.0, 1.0  # domain labels as the official AdaptSegNet code assigns them


def masked_mean(values, mask, axis_name=None):
  """Sum of `values` over `mask` / number of masked-in elements of the global batch."""
  total = jnp.sum(jnp.where(mask, values, 0.0))
  count = jnp.sum(mask).astype(jnp.float32)
  if axis_name is not None:  # pmean(count) = global count / devices, so pmean(result) = global mean
    count = jax.lax.pmean(count, axis_name)
  return total / jnp.maximum(count, 1.0)


def cross_entropy(logits, labels, axis_name=None):
  """Pixel cross-entropy averaged over pixels not labelled 255 (logits [N,H,W,C], labels [N,H,W])."""
  valid = labels != IGNORE
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return masked_mean(nll, valid, axis_name)


def summed_cross_entropy(logits, labels):
  """LSD-seg's cross_entropy2d(size_average=False) / batch: the cross-entropy summed over the pixels not labelled
  255, over this device's batch size (pmean over devices then gives the global-batch value)."""
  valid = labels != IGNORE
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  return jnp.sum(jnp.where(valid, nll, 0.0)) / logits.shape[0]


def gan_loss(d_logits, domain: float, gan: str, weight=None, weight_grid: str = "image"):
  """Discriminator-output loss against a constant domain label, averaged over the map.

  'vanilla': BCE with logits (AdaptSegNet Eq. 2/4); 'ls': least squares on the raw output (Appendix A, Eq. 7/8).
  weight [N,H,W] (pixel-wise weighted adaptation, stop-gradient): mean of weight x loss. A weight map at another
  resolution than D's output (image pixels vs D's patches) meets it there per `weight_grid`: 'image' upsamples
  D's output (bilinear, align_corners) to the weight's pixels, 'disc' averages the weights over each patch.
  """
  if weight is not None and weight.shape[1:3] != d_logits.shape[1:3]:
    if weight_grid == "image":
      d_logits = resize_bilinear(d_logits, weight.shape[1:3])
    elif weight_grid == "disc":
      weight = area_resize(weight[..., None], d_logits.shape[1:3])[..., 0]
    else:
      raise ValueError(f"weight_grid must be 'image' or 'disc', got {weight_grid!r}")
  if gan == "vanilla":
    per_pixel = optax.sigmoid_binary_cross_entropy(d_logits, jnp.full_like(d_logits, domain))
  elif gan == "ls":
    per_pixel = jnp.square(d_logits - domain)
  else:
    raise ValueError(f"loss.gan must be 'vanilla' or 'ls', got {gan!r}")
  return per_pixel.mean() if weight is None else (per_pixel * weight[..., None]).mean()


def area_resize(x, size):
  """Average of the pixels of NHWC `x` over each cell of a `size` grid (exact when it divides, antialiased
  linear otherwise)."""
  (n, h, w, c), (ho, wo) = x.shape, size
  if h % ho == 0 and w % wo == 0:
    return x.reshape(n, ho, h // ho, wo, w // wo, c).mean((2, 4))
  return jax.image.resize(x, (n, ho, wo, c), "linear", antialias=True)


def soft_cross_entropy(logits, targets, mask=None, axis_name=None, weight=None):
  """Cross-entropy against a target distribution per pixel: mean over pixels (those in `mask`, default all) of
  -sum_c targets_c log_softmax(logits)_c, over every channel of `logits` [N,H,W,C] (FADA's
  soft_label_cross_entropy; targets need not sum to 1). `weight` [N,H,W] (stop-gradient) multiplies each pixel's
  term inside that mean."""
  nll = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  nll = nll if weight is None else nll * weight
  return masked_mean(nll, jnp.ones(nll.shape, bool) if mask is None else mask, axis_name)
