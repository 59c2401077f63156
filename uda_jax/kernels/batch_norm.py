"""BatchNorm on XLA:CPU as one C++ kernel forward and one backward (issue 13).

XLA:CPU splits BatchNorm into separate elementwise passes and reductions, each reading a full-size tensor that the
previous one wrote; over the 104 layers x 2 images of the ResNet-101 AdaptSegNet step that cost ~2.9 s of a 12 s
step at 256x512, about what freezing the statistics saves (docs/performance.md). `batch_norm` computes the
batch statistics, the normalisation and the gradient (also through the returned mean and variance) in
`batch_norm_cpu.cc` as PyTorch's CPU kernels do, in float32 with the statistics' partial sums added in double;
with given statistics (frozen BatchNorm, evaluation) the normalisation and its gradient alone. It also adds the
ResNet's residual and applies its ReLU in the same pass (and masks the gradient in the backward's), where XLA
wrote and re-read each intermediate (~1 s of the AdaptSegNet step).

`layers.BatchNorm` uses it with per-device batch statistics ('batch_stats') or the running ones ('frozen',
evaluation) on a CPU backend for float32 (and bfloat16, normalised in float32); 'sync', float64 and accelerators
keep the XLA expression. UDA_JAX_BN_KERNEL=0 turns it off; =1 makes a failed build an error instead of a warning
and a fallback.

Its float32 results differ from XLA's BatchNorm by rounding only (and are closer to float64 on near-constant
channels, tests/test_cpu_kernels.py). A run's trajectory can still part from XLA's as it can from a different
all-reduce order: on the width-8 toy network the seventh step turned a 4e-5 difference in the optimizer state
into 0.7%, with either BatchNorm, each of which gives that step to 2e-6 from the same state.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax import parallel
from uda_jax.kernels import build

ENV = "UDA_JAX_BN_KERNEL"
_FORWARD = "uda_batch_norm_forward"
_BACKWARD = "uda_batch_norm_backward"


@functools.cache
def _load() -> str | None:
  """Builds and registers the kernels once per process: None on success, else why they are unavailable."""
  return build.register("batch_norm_cpu.cc", {_FORWARD: "UdaBatchNormForward", _BACKWARD: "UdaBatchNormBackward"})


def enabled() -> bool:
  """Whether training-mode BatchNorm runs as the kernel: on a CPU backend, when it builds (see module doc)."""
  return build.use_kernel(ENV, "the CPU BatchNorm kernel", "XLA's slower BatchNorm", _load)


def _call(name, like, args, out_shapes, **attrs):
  outs = jax.ffi.ffi_call(name, tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in out_shapes))(*args, **attrs)
  return parallel.vary_like(like, *outs)


def _none():
  return jnp.zeros((0,), jnp.float32)  # an absent optional operand of the kernels


def batch_norm(x, scale, bias, eps: float, residual=None, relu: bool = False, stats=None):
  """(y, mean, biased var) of a float32 (..., C) x over all but its last axis; y = (x - mean) scale
  / sqrt(var + eps) + bias, plus `residual` (float32, like x) if given, then max(y, 0) if `relu`. `stats`: the
  (mean, var) to normalise with (frozen BatchNorm, evaluation; returned as given) instead of the batch's.
  Differentiable in x, scale, bias, residual and stats, also through the returned mean and var."""
  why_not = _load()
  if why_not is not None:
    raise build.BuildError(why_not)
  if residual is not None and (residual.shape != x.shape or residual.dtype != jnp.float32):
    raise ValueError(f"batch_norm: the residual must be float32 of x's shape {x.shape}, got {residual.dtype} "
                     f"{residual.shape} (the kernel does not broadcast)")
  mean, var = (_none(), _none()) if stats is None else stats
  scale, bias, residual, mean, var = parallel.vary_like(
      x, scale, bias, _none() if residual is None else residual, mean, var)
  return _batch_norm(x, scale, bias, residual, mean, var, eps, bool(relu))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _batch_norm(x, scale, bias, residual, given_mean, given_var, eps, relu):
  return _forward(x, scale, bias, residual, given_mean, given_var, eps, relu)[0]


def _forward(x, scale, bias, residual, given_mean, given_var, eps, relu):
  c = (x.shape[-1],)
  y, mean, var = _call(_FORWARD, x, (x, scale, bias, residual, given_mean, given_var), (x.shape, c, c),
                       eps=np.float32(eps), relu=np.int64(relu))
  # the ReLU's mask is y > 0; an empty residual (none given) has an empty gradient
  return (y, mean, var), (x, mean, var, scale, y if relu else parallel.vary_like(x, _none())[0], residual,
                          given_mean)


def _backward(eps, relu, residuals, cotangents):
  x, mean, var, scale, y, residual, given_mean = residuals
  dy, dmean, dvar = cotangents
  c = (x.shape[-1],)
  frozen = given_mean.size > 0
  dx, dscale, dbias, dres = _call(_BACKWARD, x, (dy, x, mean, var, scale, dmean, dvar, y),
                                  (x.shape, c, c, residual.shape), eps=np.float32(eps), frozen=np.int64(frozen))
  if not frozen:
    return dx, dscale, dbias, dres, *parallel.vary_like(x, _none(), _none())
  # given statistics: returned as they are, and y = (x - mean) scale inv + ... with inv = (var + eps)^-1/2, so
  # d mean = -scale inv sum(g) and d var = -scale inv^2 sum(g (x - mean) inv) / 2 (sum(g) = dbias, the other dscale)
  inv = jax.lax.rsqrt(var + eps)
  return dx, dscale, dbias, dres, dmean - scale * inv * dbias, dvar - 0.5 * scale * inv * inv * dscale


_batch_norm.defvjp(_forward, _backward)
