"""The CPU conv forms (issue 13): narrow convs as a matmul and shifted adds, strided convs' input gradient as the
sub-pixel transposed conv, other stride-1 convs as the C++ kernels; the same values and gradients as XLA's
convolution (also where taps read only padding, with per-axis and asymmetric padding, in float64 and under
shard_map), used by layers.Conv on a CPU with the same parameters, and switchable off."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import parallel
from uda_jax.models import conv_forms, layers
from step_utils import NO_COMPILER, needs_compiler

_NHWC = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(conv, x, w, strides, pads, dilation, probe):
  def loss(x, w):
    y = conv(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC)
    return jnp.sum(jnp.tanh(y) * probe)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


def _compare(x_shape, w_shape, strides, pads, dilation, dtype, which, kernel=None):
  """Values and gradients of conv_forms.conv against XLA's conv; `kernel`: whether the jaxpr must call the C++
  kernels (forward, weight gradient, and the input gradient's stride-1 conv where its output channels, C_in
  times the stride squared, are a multiple of 16)."""
  assert conv_forms.form(x_shape, w_shape, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC) == which
  if kernel and NO_COMPILER:
    pytest.skip(NO_COMPILER)
  with jax.enable_x64(dtype == jnp.float64):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], x_shape, dtype)
    w = jax.random.normal(keys[1], w_shape, dtype) / np.sqrt(np.prod(w_shape[:3]))
    xla = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                                    dimension_numbers=_NHWC)
    probe = jax.random.normal(keys[2], jax.eval_shape(xla, x, w).shape, dtype)
    (l_ours, g_ours), (l_ref, g_ref) = (_value_and_grads(c, x, w, strides, pads, dilation, probe)
                                        for c in (conv_forms.conv, jax.lax.conv_general_dilated))
    if kernel is not None:
      jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv_forms.conv(
          x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC)), argnums=(0, 1)))(x, w))
      assert jaxpr.count("uda_conv_weight_grad") == kernel
      assert jaxpr.count("uda_conv_forward") == kernel * (1 + (x_shape[3] * strides[0] ** 2 % 16 == 0))
    tol = 1e-12 if dtype == jnp.float64 else 3e-6
    # relative to the sum of the loss terms' sizes: it sums up to 65536 of them with cancellation
    assert abs(float(l_ours) - float(l_ref)) <= tol * float(jnp.sum(jnp.abs(probe)))
    for ours, ref in zip(g_ours, g_ref):
      assert ours.dtype == dtype and float(np.abs(ref).max()) > 0
      np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * float(np.abs(ref).max()))
    return g_ours, g_ref


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("x_shape, w_shape, pads, dilation", [
    ((1, 33, 65, 256), (3, 3, 256, 19), ((6, 6), (6, 6)), (6, 6)),  # an ASPP branch
    ((2, 9, 17, 64), (3, 3, 64, 5), ((24, 24), (24, 24)), (24, 24)),  # outer taps read only padding
    ((2, 8, 11, 40), (3, 3, 40, 4), ((0, 2), (1, 0)), (1, 2)),  # asymmetric padding
    ((1, 7, 6, 16), (2, 2, 16, 3), ((1, 0), (0, 1)), (1, 1)),  # even kernel
])
def test_narrow_conv_equals_xla(x_shape, w_shape, pads, dilation, dtype):
  _compare(x_shape, w_shape, (1, 1), pads, dilation, dtype, "narrow")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, pads", [
    ((1, 64, 128, 19), (4, 4, 19, 32), 2, ((1, 1), (1, 1))),  # the discriminators' first conv
    ((2, 17, 23, 3), (7, 7, 3, 8), 2, ((3, 3), (3, 3))),  # ResNet stem, odd sizes: kernel padded to 8x8
    ((1, 16, 10, 5), (3, 3, 5, 6), 2, ((0, 0), (0, 0))),  # the last row and column no window reaches
    ((1, 9, 8, 4), (1, 1, 4, 6), 2, ((0, 0), (0, 0))),  # kernel smaller than the stride
    ((1, 11, 12, 3), (3, 3, 3, 5), 2, ((4, 3), (3, 5))),  # padding beyond the kernel
    ((1, 12, 13, 4), (4, 4, 4, 6), 3, ((2, 0), (1, 2))),  # stride 3, asymmetric padding
    ((2, 10, 9, 3), (2, 5, 3, 4), 2, ((0, 1), (2, 2))),  # kernel not square
])
def test_strided_conv_equals_xla_and_keeps_its_forward_and_weight_gradient(monkeypatch, x_shape, w_shape, stride,
                                                                         pads, dtype):
  monkeypatch.setenv("UDA_JAX_CONV_KERNEL", "0")  # the form without the C++ kernels (as on an accelerator)
  (dx, dw), (dx_ref, dw_ref) = _compare(x_shape, w_shape, (stride, stride), pads, (1, 1), dtype, "strided")
  np.testing.assert_array_equal(dw, dw_ref)  # XLA's own weight gradient; only the input gradient is rewritten


@pytest.mark.parametrize("x_shape, w_shape, stride, pads", [
    ((1, 64, 128, 19), (4, 4, 19, 32), 2, ((1, 1), (1, 1))),  # the discriminators' first conv (dx XLA's: 76)
    ((1, 16, 32, 16), (4, 4, 16, 32), 2, ((1, 1), (1, 1))),  # the next ones (dx the kernel's: 64 channels)
    ((2, 17, 23, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))),  # ResNet stem, odd sizes
    ((1, 16, 10, 5), (3, 3, 5, 16), 2, ((0, 0), (0, 0))),  # the last row and column no window reaches
    ((1, 9, 8, 4), (1, 1, 4, 16), 2, ((0, 0), (0, 0))),  # kernel smaller than the stride (dx 16 channels)
    ((1, 11, 12, 3), (3, 3, 3, 48), 2, ((4, 3), (3, 5))),  # padding beyond the kernel
    ((1, 12, 13, 4), (4, 4, 4, 16), 3, ((2, 0), (1, 2))),  # stride 3, asymmetric padding
    ((2, 10, 9, 8), (2, 5, 8, 80), 2, ((0, 1), (2, 2))),  # kernel not square, C_out 64 + 16
    ((1, 8, 12, 200), (4, 4, 200, 32), 2, ((1, 1), (1, 1))),  # forward's input channels in two passes (192, 8)
])
def test_strided_conv_kernels_equal_xla(x_shape, w_shape, stride, pads):
  _compare(x_shape, w_shape, (stride, stride), pads, (1, 1), jnp.float32, "strided", kernel=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("x_shape, w_shape, pads, dilation", [
    ((1, 33, 65, 256), (3, 3, 256, 256), ((2, 2), (2, 2)), (2, 2)),  # ResNet layer3
    ((2, 13, 21, 64), (3, 3, 64, 64), ((1, 1), (1, 1)), (1, 1)),  # layer1, two images
    ((2, 9, 17, 70), (3, 3, 70, 48), ((12, 12), (12, 12)), (12, 12)),  # outer taps read only padding; dx XLA's
    ((2, 9, 17, 32), (3, 3, 32, 48), ((12, 12), (12, 12)), (12, 12)),  # the same, dx by the kernel
    ((1, 8, 11, 32), (3, 3, 32, 80), ((0, 2), (1, 0)), (1, 2)),  # asymmetric padding; C_out 64 + 16
    ((1, 7, 6, 5), (2, 2, 5, 32), ((1, 0), (0, 1)), (1, 1)),  # even kernel
    ((1, 6, 9, 16), (3, 5, 16, 16), ((4, 3), (3, 5)), (1, 1)),  # rectangular kernel, padding beyond it
    ((1, 5, 7, 24), (1, 1, 24, 32), ((1, 1), (0, 2)), (1, 1)),  # padded 1x1
    ((1, 6, 13, 600), (3, 3, 600, 80), ((1, 1), (1, 1)), (1, 1)),  # input channels in three passes (256, 256, 88)
    ((1, 6, 9, 16), (3, 3, 16, 272), ((1, 1), (1, 1)), (1, 1)),  # dx (flipped kernel) sums C_out in two passes
])
def test_conv_kernels_equal_xla(x_shape, w_shape, pads, dilation, dtype):
  # float32 through the kernels; float64 (not the kernels') stays XLA's
  _compare(x_shape, w_shape, (1, 1), pads, dilation, dtype, "kernel", kernel=dtype == jnp.float32)


def test_conv_kernels_only_for_output_channels_in_sixteens():
  _compare((1, 9, 10, 16), (3, 3, 16, 24), (1, 1), ((1, 1), (1, 1)), (1, 1), jnp.float32, "kernel", kernel=False)


def test_narrow_conv_in_bfloat16_sums_in_float32():
  keys = jax.random.split(jax.random.key(4), 2)
  x = jax.random.normal(keys[0], (1, 9, 11, 512)).astype(jnp.bfloat16)
  w = (jax.random.normal(keys[1], (3, 3, 512, 7)) / 48).astype(jnp.bfloat16)
  pads = ((2, 2), (2, 2))
  ours = conv_forms.conv(x, w, (1, 1), pads, rhs_dilation=(2, 2), dimension_numbers=_NHWC)
  exact = jax.lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), pads,
                                       rhs_dilation=(2, 2), dimension_numbers=_NHWC)
  assert ours.dtype == jnp.bfloat16
  # one bfloat16 rounding of the float32 sum (relative 2^-8), not 4608 of them
  np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=2**-8, atol=1e-6 * float(np.abs(exact).max()))


def test_form_picks_only_the_shapes_it_handles():
  pads = ((1, 1), (1, 1))
  form = functools.partial(conv_forms.form, dimension_numbers=_NHWC)
  assert form((1, 8, 8, 2048), (3, 3, 2048, 19), (1, 1), pads) == "narrow"
  assert form((1, 8, 8, 256), (3, 3, 256, 256), (1, 1), pads) == "kernel"  # ResNet 3x3: narrow measured slower
  assert form((1, 8, 8, 64), (1, 1, 64, 4), (1, 1), pads) == "kernel"  # a padded 1x1 (unpadded: Dense1x1)
  assert form((1, 8, 8, 64), (4, 4, 64, 128), (2, 2), pads) == "strided"
  assert form((1, 8, 8, 64), (3, 3, 64, 128), (2, 2), pads, rhs_dilation=(2, 2)) is None
  assert form((1, 8, 8, 64), (3, 3, 64, 128), (2, 1), pads) is None
  assert form((1, 8, 8, 256), (3, 3, 256, 19), (1, 1), "SAME") is None
  assert form((1, 8, 8, 256), (3, 3, 128, 8), (1, 1), pads, feature_group_count=2) is None
  assert form((1, 8, 8, 256), (3, 3, 256, 19), (1, 1), pads, lhs_dilation=(2, 2)) is None
  assert form((1, 256, 8, 8), (19, 256, 3, 3), (1, 1), pads, dimension_numbers=("NCHW", "OIHW", "NCHW")) is None
  assert form((1, 256, 8, 8), (19, 256, 3, 3), (1, 1), pads, dimension_numbers=None) is None  # lax's default: NCHW


ENVS = ("UDA_JAX_NARROW_CONV_MATMUL", "UDA_JAX_STRIDED_CONV_S2D", "UDA_JAX_CONV_KERNEL")


@needs_compiler
@pytest.mark.parametrize("kernel, stride, padding, dilation, c_out, env", [
    (3, 1, 2, 2, 4, ENVS[0]), (4, 2, 1, 1, 16, ENVS[1]), (3, 1, 2, 2, 32, ENVS[2])])
def test_layer_uses_the_form_on_cpu_with_the_same_parameters(monkeypatch, kernel, stride, padding, dilation,
                                                             c_out, env):
  x = jax.random.normal(jax.random.key(1), (1, 12, 14, 96))
  conv = layers.Conv(c_out, kernel, stride=stride, padding=padding, dilation=dilation, use_bias=True)
  params = conv.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, params) == {"params": {"conv": {"kernel": (kernel, kernel, 96, c_out),
                                                                 "bias": (c_out,)}}}
  loss = lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x)))
  grads = lambda: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  # XLA's form: every conv op a convolution (forward, input and weight gradient); ours none: 'narrow' matmuls,
  # 'strided' and 'kernel' the C++ kernels' custom calls (the strided input gradient a sub-pixel conv of 96 x 4
  # channels, itself the kernels')
  hlo = lambda: jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).as_text()
  for name in ENVS:
    monkeypatch.delenv(name, raising=False)
  assert set(layers.cpu_conv_forms()) == {"narrow", "strided", "kernel"}
  ours, ours_hlo = grads(), hlo()
  monkeypatch.setenv(env, "0")
  ref, ref_hlo = grads(), hlo()
  assert ref_hlo.count("convolution(") == 3 and "uda_conv_weight_grad" not in ref_hlo
  assert ours_hlo.count("convolution(") == 0 and ("uda_conv_weight_grad" in ours_hlo) == (env != ENVS[0])
  if stride > 1:  # the input gradient is a stride-1 conv of the output gradient: no input dilation
    assert "lhs_dilate = [2, 2]" in ref_hlo and "lhs_dilate = [2, 2]" not in ours_hlo
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max())),
               ours, ref)


@pytest.mark.parametrize("w_shape, stride", [((4, 4, 8, 6), 2), ((4, 4, 8, 16), 2), ((3, 3, 8, 16), 1),
                                             ((3, 3, 16, 32), 1)])
def test_kernel_gradient_is_summed_over_devices_under_shard_map(w_shape, stride):
  mesh = parallel.make_mesh()
  keys = jax.random.split(jax.random.key(3), 2)
  # 'strided' without and with the kernels, 'kernel' with dx XLA's / ours
  x = jax.random.normal(keys[0], (mesh.size * 2, 10, 12, w_shape[2]))
  w = jax.random.normal(keys[1], w_shape) / 12
  pads = ((1, 1), (1, 1))

  def grads(conv):
    def per_device(x, w):  # w unmapped (replicated), x split over 'data'
      y = conv(x, w, (stride, stride), pads, dimension_numbers=_NHWC)
      return jax.lax.psum(jnp.sum(jnp.tanh(y)), parallel.AXIS)
    loss = jax.shard_map(per_device, mesh=mesh, in_specs=(jax.P(parallel.AXIS), jax.P()), out_specs=jax.P())
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

  for ours, ref in zip(grads(conv_forms.conv), grads(jax.lax.conv_general_dilated)):
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6 * float(np.abs(ref).max()))


@needs_compiler
def test_kernel_form_leaves_mistakes_empty_outputs_and_a_disabled_kernel_to_xla(monkeypatch):
  x, w = jnp.ones((1, 8, 8, 32)), jnp.ones((3, 3, 16, 32))
  with pytest.raises(ValueError, match="feature dimension"):  # XLA's own check, not a kernel reading past w
    conv_forms.conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)
  y = conv_forms.conv(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 16)), (1, 1), ((0, 0), (0, 0)),
                      rhs_dilation=(4, 4), dimension_numbers=_NHWC)
  assert y.shape == (1, 0, 0, 16)  # the window exceeds the input: XLA's empty output
  x, w = jnp.ones((1, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
  traced = lambda: str(jax.make_jaxpr(lambda x: conv_forms.conv(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                dimension_numbers=_NHWC))(x))
  assert "uda_conv_forward" in traced()
  monkeypatch.setenv("UDA_JAX_CONV_KERNEL", "0")
  assert "uda_conv_forward" not in traced()


@needs_compiler
@pytest.mark.parametrize("c_in, c_out, kernel", [(40, 32, True), (1024, 256, True), (24, 8, False)])
def test_matmul_1x1_weight_gradient_by_the_kernel_equals_xla(c_in, c_out, kernel):
  """Dense1x1's product on a CPU: the weight gradient x^T dy the C++ kernel's where C_out is a multiple of 16, also
  under shard_map with an unmapped weight (summed over devices)."""
  mesh = parallel.make_mesh()
  keys = jax.random.split(jax.random.key(5), 2)
  x = jax.random.normal(keys[0], (mesh.size * 2, 7, 9, c_in))
  w = jax.random.normal(keys[1], (c_in, c_out)) / np.sqrt(c_in)

  def grads(matmul):
    def per_device(x, w):
      return jax.lax.psum(jnp.sum(jnp.tanh(matmul(x, w))), parallel.AXIS)
    loss = jax.shard_map(per_device, mesh=mesh, in_specs=(jax.P(parallel.AXIS), jax.P()), out_specs=jax.P())
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

  (l_ours, g_ours), (l_ref, g_ref) = grads(conv_forms.matmul_1x1), grads(
      lambda x, w: jnp.einsum("nhwc,cd->nhwd", x, w))
  assert abs(float(l_ours) - float(l_ref)) <= 1e-6 * x.shape[0] * 63 * c_out
  for ours, ref in zip(g_ours, g_ref):
    np.testing.assert_allclose(ours, ref, rtol=0, atol=3e-6 * float(np.abs(ref).max()))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv_forms.matmul_1x1(x, w)), argnums=(0, 1)))(x, w))
  assert jaxpr.count("uda_conv_weight_grad") == kernel
