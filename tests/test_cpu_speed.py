"""CPU speed-ups (issue 13): the 1x1 conv as a matmul, transposed convs in sub-pixel form, and the XLA:CPU
flags change no result; kept host memory removes the page faults of repeated steps."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from uda_jax import host_memory, xla_flags
from uda_jax.models import conv_forms, layers
from uda_jax.models.layers import Conv, ConvTranspose, normal_001, torch_bias_init

HERE = os.path.dirname(os.path.abspath(__file__))


class _Ours(nn.Module):
  stride: int
  bias: bool

  @nn.compact
  def __call__(self, x):
    return Conv(6, 1, stride=self.stride, use_bias=self.bias, name="c")(x)


class _FlaxConv(nn.Module):  # what Conv ran before for 1x1: flax's convolution under the same names
  stride: int
  bias: bool

  @nn.compact
  def __call__(self, x):
    return nn.Conv(6, (1, 1), (self.stride, self.stride), padding=((0, 0), (0, 0)), use_bias=self.bias,
                   kernel_init=normal_001, bias_init=torch_bias_init(x.shape[-1]), name="conv")(x)


class _Reference(nn.Module):
  stride: int
  bias: bool

  @nn.compact
  def __call__(self, x):
    return _FlaxConv(self.stride, self.bias, name="c")(x)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_1x1_matmul_equals_the_convolution_in_params_values_and_gradients(stride, bias):
  x = jax.random.normal(jax.random.key(1), (2, 9, 11, 5))  # odd sizes: the strided slice must match the conv
  ours, ref = _Ours(stride, bias), _Reference(stride, bias)
  p_ours, p_ref = ours.init(jax.random.key(0), x), ref.init(jax.random.key(0), x)
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_ref)  # same names: checkpoints load unchanged
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_ref)  # same initialisation
  y_ours, y_ref = ours.apply(p_ours, x), ref.apply(p_ref, x)
  assert y_ours.shape == y_ref.shape == (2, -(-9 // stride), -(-11 // stride), 6)
  np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-6)
  loss = lambda m: lambda p, x: (m.apply(p, x) ** 2).sum()
  g_ours, g_ref = jax.grad(loss(ours), (0, 1))(p_ours, x), jax.grad(loss(ref), (0, 1))(p_ref, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_ours, g_ref)


@pytest.mark.parametrize("backend,forced,matmul", [("cpu", "", True), ("gpu", "", False), ("tpu", "", False),
                                                   ("cpu", "0", False), ("gpu", "1", True)])
def test_1x1_runs_as_a_matmul_on_cpu_only_unless_forced(monkeypatch, backend, forced, matmul):
  monkeypatch.setattr(layers.jax, "default_backend", lambda: backend)
  monkeypatch.setenv("UDA_JAX_CONV1X1_MATMUL", forced)
  x = jax.numpy.ones((1, 4, 4, 3))
  model = _Ours(1, False)
  params = model.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(model.apply)(params, x))
  assert ("dot_general" in jaxpr, "conv_general_dilated" in jaxpr) == (matmul, not matmul)


# (k, stride, padding): FCN-8s's upscore (4, 2, 0) and (16, 8, 0); LSD-seg G's (3, 2, 1), (5, 2, 2) and its last
# (8, 2, 100), whose padding crops more than a kernel; k not a multiple of s; k < s.
@pytest.mark.parametrize("k,s,p", [(4, 2, 0), (16, 8, 0), (3, 2, 1), (5, 2, 2), (8, 2, 100), (5, 3, 4), (2, 3, 0)])
def test_subpixel_transposed_conv_equals_the_dilated_form_in_values_and_gradients(k, s, p):
  n = 3 + -(-2 * p // s)  # big enough that the output is not empty
  x = jax.random.normal(jax.random.key(0), (2, n, n + 2, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 4))
  y_sub, y_dil = conv_forms.conv_transpose_subpixel(x, w, s, p), layers.conv_transpose_dilated(x, w, s, p)
  assert y_sub.shape == y_dil.shape == (2, (n - 1) * s - 2 * p + k, (n + 1) * s - 2 * p + k, 4)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())  # float32 sums
  close(y_sub, y_dil)
  g = jax.random.normal(jax.random.key(2), y_dil.shape)
  grads = [jax.grad(lambda x, w: (f(x, w, s, p) * g).sum(), (0, 1))(x, w)
           for f in (conv_forms.conv_transpose_subpixel, layers.conv_transpose_dilated)]
  jax.tree.map(close, *grads)


@pytest.mark.parametrize("backend,forced,subpixel", [("cpu", "", True), ("gpu", "", False), ("cpu", "0", False),
                                                     ("tpu", "1", True)])
def test_transposed_convs_run_in_subpixel_form_on_cpu_only_unless_forced(monkeypatch, backend, forced, subpixel):
  monkeypatch.setattr(layers.jax, "default_backend", lambda: backend)
  monkeypatch.setenv("UDA_JAX_SUBPIXEL_DECONV", forced)
  x = jax.numpy.ones((1, 4, 4, 3))
  model = ConvTranspose(3, 4, 2, frozen=False)
  params = model.init(jax.random.key(0), x)
  assert ("lhs_dilation=(2, 2)" in str(jax.make_jaxpr(model.apply)(params, x))) == (not subpixel)
  y = model.apply(params, x)
  monkeypatch.setenv("UDA_JAX_SUBPIXEL_DECONV", "1" if forced == "0" else "0")  # the other path, same params
  np.testing.assert_allclose(model.apply(params, x), y, rtol=1e-5, atol=1e-6)


def test_flags_are_appended_on_cpu_only(monkeypatch):
  monkeypatch.setattr(xla_flags, "backend_started", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert xla_flags.apply() == () and os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert xla_flags.apply(enabled=False) == ()
  assert xla_flags.apply() == xla_flags.CPU_FLAGS
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *xla_flags.CPU_FLAGS]
  assert xla_flags.apply() == ()  # never twice
  monkeypatch.setattr(xla_flags, "KNOWN_JAXLIB", ("0.0.1",))  # another jaxlib may not know the flag: fatal there
  monkeypatch.setenv("XLA_FLAGS", "")
  assert xla_flags.apply() == () and os.environ["XLA_FLAGS"] == ""


def _step(mode):
  out = subprocess.run([sys.executable, os.path.join(HERE, "cpu_step_check.py"), mode], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert out.returncode == 0, out.stderr[-3000:]
  return {r[1] if r[0] == "state" else r[0]: r[-1] for r in (line.split() for line in out.stdout.splitlines())}


def test_the_flags_start_jax_and_leave_the_step_within_float_noise():
  with_flags, without = _step("flags"), _step("noflags")
  assert with_flags["xla_flags"] == xla_flags.CPU_FLAGS[0] and without["xla_flags"] == "-"
  for key in ("loss", "seg", "d_main", "d_aux"):
    assert float(with_flags[key]) == pytest.approx(float(without[key]), rel=1e-4), key


def _faults(mode):
  # glibc malloc as configured by the check alone: no preloaded allocator, no malloc tunables from this shell
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}
  out = subprocess.run([sys.executable, os.path.join(HERE, "host_memory_check.py"), mode], capture_output=True,
                       text=True, timeout=300, env={**env, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  _, kept, _, faults = out.stdout.splitlines()[-1].split()
  return kept == "True", (int(faults) if faults != "-" else None), out.stderr


def _huge_pages_always():
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[always]" in f.read()
  except OSError:
    return False


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt's settings are glibc's")  # pylint: disable=protected-access
@pytest.mark.skipif(_huge_pages_always(), reason="with transparent huge pages always on, fresh maps fault in 2 MB pages")
def test_kept_host_memory_removes_the_page_faults_of_repeated_steps():
  # 64 MB of XLA temporaries per execution: glibc maps them afresh each time (16,384 faults per execution) unless
  # malloc keeps freed memory, as the trainer and the benchmark set it on CPU; then, once the heap has settled,
  # an execution now and then still grows it by one block.
  default_kept, default_faults, _ = _faults("default")
  assert not default_kept and default_faults > 100_000, default_faults
  kept, faults, _ = _faults("keep")
  assert kept and faults < default_faults / 2, (faults, default_faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt's settings are glibc's")  # pylint: disable=protected-access
def test_host_memory_settings_after_a_thread_allocated_are_reported_as_partial():
  # That thread's arena still maps large blocks afresh: apply() says so instead of claiming the memory is kept.
  kept, _, stderr = _faults("late")
  assert not kept
  assert "applies only in part: 2 malloc arenas exist already" in stderr, stderr[-2000:]


def test_host_memory_is_left_alone_off_the_cpu(monkeypatch):
  monkeypatch.setattr(xla_flags, "backend_started", lambda: False)
  monkeypatch.setattr(host_memory, "_glibc", lambda: pytest.fail("malloc touched"))
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not host_memory.apply()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not host_memory.apply(enabled=False)
  monkeypatch.setattr(xla_flags, "backend_started", lambda: True)  # too late once JAX's threads run
  assert not host_memory.apply()
