"""The CPU kernels (issue 13). BatchNorm: same values and gradients as XLA's BatchNorm, in the layer and the whole
step, and no less accurate. The stride-1 conv kernels (their cases in test_conv_forms.py): the whole step. Both:
built once into their cache; a missing compiler falls back with a warning, or is an error when forced."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax import parallel, steps
from uda_jax.errors import UserError
from uda_jax.kernels import batch_norm as bn_kernel
from uda_jax.kernels import build, conv_kernel
from uda_jax.models import layers
from step_utils import init, needs_compiler, random_batch


def _xla_batch_norm(x, scale, bias, eps, residual=None, relu=False):
  mean = x.mean(tuple(range(x.ndim - 1)))
  var = jnp.square(x - mean).mean(tuple(range(x.ndim - 1)))
  y = (x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias
  y = y if residual is None else y + residual
  return jax.nn.relu(y) if relu else y, mean, var


def _close(a, b):  # float32 sums in a different order: relative to the largest entry
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * float(np.abs(b).max()))


@needs_compiler
@pytest.mark.parametrize("residual, relu", [(False, False), (False, True), (True, True), (True, False)])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 17, 33, 64), (1, 9, 13, 300)])
def test_kernel_equals_xla_batch_norm_in_values_and_gradients(monkeypatch, shape, residual, relu):
  """Also with the residual add and the ReLU the kernel fuses (the ResNet's relu(bn(x) + residual))."""
  monkeypatch.delenv(bn_kernel.ENV, raising=False)
  assert bn_kernel.enabled()  # on by default on a CPU
  k = jax.random.split(jax.random.key(0), 7)
  c = shape[-1]
  x = jax.random.normal(k[0], shape) * 3 + 1.5  # an offset mean: the variance must be centred
  scale, bias = jax.random.uniform(k[1], (c,)) + 0.5, jax.random.normal(k[2], (c,))
  w, wm, wv = jax.random.normal(k[3], shape), jax.random.normal(k[4], (c,)), jax.random.normal(k[5], (c,))
  r = jax.random.normal(k[6], shape) if residual else None
  f_ours = lambda x, s, b, r: bn_kernel.batch_norm(x, s, b, 1e-5, r, relu)
  f_ref = lambda x, s, b, r: _xla_batch_norm(x, s, b, 1e-5, r, relu)

  def loss(f):  # cotangents reach y through a ReLU and the returned mean and variance directly
    def l(x, s, b, r):
      y, m, v = f(x, s, b, r)
      return jnp.sum(jax.nn.relu(y) * w) + jnp.sum(m * wm) + jnp.sum(v * wv)
    return jax.jit(jax.value_and_grad(l, argnums=(0, 1, 2, 3) if residual else (0, 1, 2)))

  jax.tree.map(_close, jax.jit(f_ours)(x, scale, bias, r), jax.jit(f_ref)(x, scale, bias, r))
  (l_ours, g_ours), (l_ref, g_ref) = loss(f_ours)(x, scale, bias, r), loss(f_ref)(x, scale, bias, r)
  assert float(l_ours) == pytest.approx(float(l_ref), rel=1e-5)
  jax.tree.map(_close, g_ours, g_ref)
  if relu:  # the clipped entries' gradient is exactly 0, in x's and the residual's
    assert float(jnp.mean(f_ref(x, scale, bias, r)[0] == 0)) > 0.2
  hlo = jax.jit(jax.grad(lambda x: f_ours(x, scale, bias, r)[0].sum())).lower(x).as_text()
  assert "uda_batch_norm_backward" in hlo and "maximum" not in hlo  # the ReLU and its mask in the kernels


@needs_compiler
@pytest.mark.parametrize("residual, relu", [(False, False), (True, True)])
def test_kernel_with_given_statistics_equals_xla_in_values_and_gradients(residual, relu):
  """Frozen BatchNorm and evaluation: the running (mean, var) given; gradients also reach them."""
  k = jax.random.split(jax.random.key(2), 7)
  shape = (2, 9, 11, 48)
  x = jax.random.normal(k[0], shape) * 2 + 1
  scale, bias = jax.random.uniform(k[1], (48,)) + 0.5, jax.random.normal(k[2], (48,))
  mean, var = jax.random.normal(k[3], (48,)), jax.random.uniform(k[4], (48,)) + 0.5
  r = jax.random.normal(k[5], shape) if residual else None
  w = jax.random.normal(k[6], shape)

  def ref(x, s, b, m, v):
    y = (x - m) * (jax.lax.rsqrt(v + 1e-5) * s) + b
    y = y if r is None else y + r
    return jax.nn.relu(y) if relu else y, m, v

  ours = lambda x, s, b, m, v: bn_kernel.batch_norm(x, s, b, 1e-5, r, relu, stats=(m, v))
  loss = lambda f: jax.jit(jax.value_and_grad(
      lambda *a: jnp.sum(f(*a)[0] * w) + jnp.sum(f(*a)[1] * 2 + f(*a)[2] ** 2), argnums=(0, 1, 2, 3, 4)))
  jax.tree.map(_close, jax.jit(ours)(x, scale, bias, mean, var), jax.jit(ref)(x, scale, bias, mean, var))
  (l_ours, g_ours), (l_ref, g_ref) = loss(ours)(x, scale, bias, mean, var), loss(ref)(x, scale, bias, mean, var)
  assert float(l_ours) == pytest.approx(float(l_ref), rel=1e-5)
  jax.tree.map(_close, g_ours, g_ref)


@needs_compiler
def test_a_residual_the_kernel_cannot_take_is_named_or_added_outside():
  x = jnp.ones((1, 4, 4, 16))
  with pytest.raises(ValueError, match=r"residual must be float32 of x's shape \(1, 4, 4, 16\), got float32 \(16,\)"):
    bn_kernel.batch_norm(x, jnp.ones(16), jnp.zeros(16), 1e-5, jnp.ones(16))
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=True)
  x = jax.random.normal(jax.random.key(1), x.shape)
  r = jax.random.normal(jax.random.key(2), (16,))
  run = lambda r: bn.apply(variables, x, train=True, residual=r, relu=True, mutable=["batch_stats"])[0]
  # a broadcast residual: the layer adds it after the kernel, as the fused kernel adds the full-size one
  np.testing.assert_allclose(run(r), run(jnp.broadcast_to(r, x.shape)), rtol=1e-6, atol=1e-6)


@needs_compiler
def test_kernel_is_no_less_accurate_than_xla_on_near_constant_channels():
  """A channel whose spread is far below its mean is where float32 BatchNorm loses digits; measured against
  float64, the kernel (double partial sums) keeps more of them than XLA's float32 expression."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 8, 16, 4))
  x[..., 1] = 50 + 1e-3 * x[..., 1]
  x[..., 2] = -3 + 1e-5 * x[..., 2]
  w = rng.normal(size=x.shape)
  scale, bias, n = np.array([1.0, 0.5, 2.0, 1.5]), np.array([0.0, 0.1, -0.2, 0.3]), x.size // 4
  # float64 reference: y, and dx of sum(y * w) (dy = w)
  xc = x - x.mean((0, 1, 2))
  inv = 1 / np.sqrt(np.square(xc).mean((0, 1, 2)) + 1e-5)
  xhat = xc * inv
  y64 = xhat * scale + bias
  dx64 = scale * inv / n * (n * w - w.sum((0, 1, 2)) - xhat * (w * xhat).sum((0, 1, 2)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)

  def errors(f):
    y = f(f32(x), f32(scale), f32(bias), 1e-5)[0]
    dx = jax.grad(lambda x: jnp.sum(f(x, f32(scale), f32(bias), 1e-5)[0] * f32(w)))(f32(x))
    return np.abs(y - y64).max((0, 1, 2)), np.abs(dx - dx64).max((0, 1, 2)) / np.abs(dx64).max((0, 1, 2))

  (y_k, dx_k), (y_x, dx_x) = errors(bn_kernel.batch_norm), errors(_xla_batch_norm)
  assert np.all(y_k <= y_x * 1.01 + 1e-6) and np.all(dx_k <= dx_x * 1.01 + 1e-6), (y_k, y_x, dx_k, dx_x)
  assert np.all(y_k < 1e-3) and np.all(dx_k < 1e-4), (y_k, dx_k)  # XLA: 1.9e-3 and 1.5e-4 on channel 1


@needs_compiler
@pytest.mark.parametrize("mode, train", [("batch_stats", True), ("frozen", True), ("batch_stats", False)])
@pytest.mark.parametrize("fuse", [{}, {"relu": True}, {"relu": True, "residual": True}])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_batch_norm_layer_with_the_kernel_equals_the_xla_layer(monkeypatch, dtype, fuse, mode, train):
  """Batch statistics, frozen and evaluation (the running statistics); also relu(bn(x) + residual), which the
  kernel fuses in float32 (under bfloat16 the add stays outside, in bfloat16 as in XLA's layer)."""
  keys = jax.random.split(jax.random.key(1), 2)
  x = (jax.random.normal(keys[0], (2, 6, 10, 16)) * 2 - 1).astype(dtype)
  residual = jax.random.normal(keys[1], x.shape).astype(dtype) if fuse.get("residual") else None
  bn = layers.BatchNorm(mode=mode)
  variables = bn.init(jax.random.key(0), x, train=True)
  stats = jax.random.split(jax.random.key(3), 2)  # running statistics other than the initial 0 and 1
  variables = {**variables, "batch_stats": {"mean": jax.random.normal(stats[0], (16,)) - 1,
                                            "var": jax.random.uniform(stats[1], (16,)) * 3 + 0.5}}

  def run():
    def f(params, x, residual):
      y, new = bn.apply({**variables, "params": params}, x, train=train, residual=residual,
                        relu=fuse.get("relu", False), mutable=["batch_stats"])
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, new)
    jaxpr = str(jax.make_jaxpr(f)(variables["params"], x, residual))
    (_, (y, new)), grads = jax.value_and_grad(f, argnums=(0, 1, 2) if residual is not None else (0, 1),
                                              has_aux=True)(variables["params"], x, residual)
    return ("uda_batch_norm_forward" in jaxpr), (y.astype(jnp.float32), new, jax.tree.map(
        lambda g: g.astype(jnp.float32), grads))

  monkeypatch.setenv(bn_kernel.ENV, "1")
  used, ours = run()
  monkeypatch.setenv(bn_kernel.ENV, "0")
  unused, ref = run()
  assert used and not unused
  if dtype == jnp.bfloat16:  # both normalise in float32; y rounds to bfloat16 once, so may differ by one ulp
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-2, atol=2e-2)
    return
  jax.tree.map(_close, ours, ref)
  if fuse:
    assert float(jnp.mean(ours[0] == 0)) > 0.2  # the ReLU clipped


@needs_compiler
@pytest.mark.parametrize("env", [bn_kernel.ENV, conv_kernel.ENV])
def test_training_step_with_the_kernel_equals_the_xla_step(monkeypatch, toy_config, env):
  batch = random_batch()
  results = {}
  for forced in ("1", "0"):
    monkeypatch.setenv(env, forced)
    method, mesh, states = init(toy_config, batch)
    new, metrics = steps.make_train_step(method, toy_config, mesh)(states, parallel.global_batch(batch, mesh),
                                                                   jnp.int32(0))
    results[forced] = jax.device_get((new, metrics))
  (new_k, m_k), (new_x, m_x) = results["1"], results["0"]
  for key in ("loss_seg", "loss_adv_main"):
    if key in m_x:
      assert float(m_k[key]) == pytest.approx(float(m_x[key]), rel=1e-5), key
  moved, differ = 0, False
  for name in new_x:
    for a, b in zip(jax.tree.leaves(new_k[name]), jax.tree.leaves(new_x[name]), strict=True):
      if np.issubdtype(np.asarray(b).dtype, np.floating):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(float(np.abs(b).max()), 1e-3))
        moved += 1
        differ = differ or not np.array_equal(a, b)
  assert moved > 10 and differ  # the kernel ran: other rounding than XLA's


def test_build_writes_one_library_and_reuses_it(tmp_path, monkeypatch):
  if build.compiler() is None:
    pytest.skip("no C++ compiler")
  monkeypatch.setenv("UDA_JAX_KERNEL_CACHE", str(tmp_path))
  path = build.build("batch_norm_cpu.cc")
  assert os.path.dirname(path) == str(tmp_path) and os.listdir(tmp_path) == [os.path.basename(path)]
  stamp = os.stat(path).st_mtime_ns
  assert build.build("batch_norm_cpu.cc") == path and os.stat(path).st_mtime_ns == stamp  # not rebuilt


def test_a_missing_or_failing_compiler_is_named_and_leaves_no_file(tmp_path, monkeypatch):
  monkeypatch.setenv("UDA_JAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  with pytest.raises(build.BuildError, match="no C.. compiler found"):
    build.build("batch_norm_cpu.cc")
  monkeypatch.setenv("CXX", "false")  # exits 1: a compiler that fails
  with pytest.raises(build.BuildError, match="batch_norm_cpu.cc did not compile"):
    build.build("batch_norm_cpu.cc")
  assert os.listdir(tmp_path) == []  # no half-written library


def test_without_a_compiler_training_falls_back_unless_the_kernel_is_forced(tmp_path, monkeypatch):
  monkeypatch.setenv("UDA_JAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  monkeypatch.setattr(bn_kernel, "_load", bn_kernel._load.__wrapped__)  # not the process's cached build
  warnings = []
  monkeypatch.setattr(build, "warn_fallback", lambda env, what, instead, why: warnings.append(
      f"{what}: {instead}: {why}"))
  monkeypatch.setenv(bn_kernel.ENV, "")
  assert not bn_kernel.enabled()
  assert len(warnings) == 1 and "no C++ compiler" in warnings[0]
  monkeypatch.setenv(bn_kernel.ENV, "0")
  assert not bn_kernel.enabled() and len(warnings) == 1  # off: not even tried
  x = jnp.ones((1, 2, 2, 3))
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=True)
  y, _ = bn.apply(variables, x, train=True, mutable=["batch_stats"])  # XLA's BatchNorm, nothing built
  np.testing.assert_allclose(y, 0.0, atol=1e-6)
  assert os.listdir(tmp_path) == []
  # the conv kernels likewise: the layers keep XLA's convolutions
  monkeypatch.setattr(conv_kernel, "_load", conv_kernel._load.__wrapped__)
  monkeypatch.setenv(conv_kernel.ENV, "")
  assert "kernel" not in layers.cpu_conv_forms() and len(warnings) == 2 and "no C++ compiler" in warnings[1]
  assert os.listdir(tmp_path) == []
  monkeypatch.setenv(conv_kernel.ENV, "1")
  with pytest.raises(build.BuildError, match="UDA_JAX_CONV_KERNEL=1 but .* no C.. compiler"):
    layers.cpu_conv_forms()
  monkeypatch.setenv(bn_kernel.ENV, "1")
  with pytest.raises(build.BuildError, match="UDA_JAX_BN_KERNEL=1 but .* no C.. compiler"):
    bn_kernel.enabled()
  monkeypatch.setenv(bn_kernel.ENV, "yes")
  with pytest.raises(UserError, match="UDA_JAX_BN_KERNEL must be 0 or 1, got 'yes'"):
    bn_kernel.enabled()
  monkeypatch.setenv("UDA_JAX_CONV1X1_MATMUL", "on")  # the rewrites' switches read the same way
  with pytest.raises(UserError, match="UDA_JAX_CONV1X1_MATMUL must be 0 or 1, got 'on'"):
    layers.conv1x1_as_matmul()


def test_the_kernel_is_for_cpu_backends_only(monkeypatch):
  monkeypatch.setattr(bn_kernel.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(bn_kernel, "_load", lambda: pytest.fail("built for a GPU run"))
  for forced in ("", "1"):
    monkeypatch.setenv(bn_kernel.ENV, forced)
    assert not bn_kernel.enabled()


@needs_compiler
def test_unmapped_scale_and_bias_get_the_device_summed_gradient_under_shard_map():
  mesh = parallel.make_mesh()
  x = jax.device_put(jax.random.normal(jax.random.key(2), (mesh.size * 2, 5, 7, 8)) + 1.0,
                     jax.NamedSharding(mesh, jax.P("data")))
  scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1.0, 1.0, 8)

  def grads(f):
    def body(scale, bias, x):  # scale and bias unmapped (replicated), x split over 'data'
      y = f(x, scale, bias, 1e-5)[0]
      return jax.lax.psum(jnp.sum(jnp.sin(y)), "data")
    loss = jax.shard_map(body, mesh=mesh, in_specs=(jax.P(), jax.P(), jax.P("data")), out_specs=jax.P())
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(scale, bias, x)

  jax.tree.map(_close, grads(bn_kernel.batch_norm), grads(_xla_batch_norm))
