"""Mixed precision (bfloat16 convolutions, float32 everything else), float64 everywhere, and rematerialisation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from step_utils import init, random_batch
from uda_jax import parallel, steps

HERE = os.path.dirname(os.path.abspath(__file__))


def _step(config, batch):
  method, mesh, states = init(config, batch)
  before = jax.device_get(states)  # the step donates its input states
  new, metrics = steps.make_train_step(method, config, mesh)(states, parallel.global_batch(batch, mesh),
                                                            jnp.int32(0))
  return before, jax.device_get(new), jax.device_get(metrics)


def _conv_dtypes(fn, *args):
  """Operand dtypes of every convolution and dot in fn's jaxpr (nested calls included)."""
  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
        found.extend(str(v.aval.dtype) for v in eqn.invars[:2])
      for p in eqn.params.values():
        for inner in p if isinstance(p, (list, tuple)) else (p,):
          inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
          if hasattr(inner, "eqns"):
            walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


@pytest.mark.parametrize("preset", ["adaptsegnet:toy", "fada:toy,adv"])
def test_bfloat16_computes_convolutions_in_bf16_and_keeps_every_state_float32(preset):
  """Output-space (AdaptSegNet) and feature-level fine-grained (FADA) discriminators."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, presets = preset.split(":")
  c = importlib.import_module(module).get_config(presets)
  c.init_from_required = ""
  c.model.width, c.disc.channels, c.disc.width = 8, (8, 8, 8, 8), 16
  batch = random_batch(batch=2)
  _, f32_new, f32_metrics = _step(c, batch)
  c.model.dtype = "bfloat16"
  states, new, metrics = _step(c, batch)
  for name, state in new.items():
    for part in ("params", "batch_stats", "opt_state"):
      dtypes = {str(x.dtype) for x in jax.tree.leaves(getattr(state, part)) if jnp.issubdtype(x.dtype, jnp.floating)}
      assert dtypes <= {"float32"}, (name, part, dtypes)
  for k, v in metrics.items():
    assert v.dtype == np.float32 and np.isfinite(v), k
    if k.startswith(("loss_", "seg_", "adv_")):
      assert float(v) == pytest.approx(float(f32_metrics[k]), rel=5e-2), k
  # The convolutions of the segmenter and of each discriminator see bf16 operands.
  seg = states["seg"]
  variables = {"params": seg.params, "batch_stats": seg.batch_stats}
  seg_dtypes = _conv_dtypes(lambda x: seg.apply_fn(variables, x, train=False), batch["source_image"])
  assert seg_dtypes and set(seg_dtypes) == {"bfloat16"}, set(seg_dtypes)
  d = states["d_main"]
  features = jax.eval_shape(lambda x: seg.apply_fn(variables, x, train=False)["features"], batch["source_image"])
  d_input = np.zeros(features.shape if "fada" in preset else (2, 32, 64, 19), np.float32)
  d_dtypes = _conv_dtypes(lambda x: d.apply_fn({"params": d.params}, x), d_input)
  assert d_dtypes and set(d_dtypes) == {"bfloat16"}, set(d_dtypes)
  assert d.apply_fn({"params": d.params}, d_input).dtype == jnp.float32  # the losses' input


def test_float64_reaches_every_layer_and_parameter():
  out = subprocess.run([sys.executable, "-c", _FLOAT64_CHECK], capture_output=True, text=True, timeout=600,
                       cwd=HERE, env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["params", "float64", "convs", "float64", "losses", "float64"], out.stdout


_FLOAT64_CHECK = """
import sys
sys.path[:0] = ['.', '../configs']
import jax, jax.numpy as jnp
import adaptsegnet, fada
from step_utils import init, random_batch
from uda_jax import parallel, steps
from test_precision import _conv_dtypes
c = fada.get_config('toy,adv')
c.init_from_required = ''
c.model.width, c.disc.width, c.model.dtype = 8, 16, 'float64'
batch = random_batch(batch=2)
method, mesh, states = init(c, batch)
print('params', *{str(x.dtype) for s in states.values() for x in jax.tree.leaves((s.params, s.batch_stats))})
seg, d = states['seg'], states['d_main']
v = {'params': seg.params, 'batch_stats': seg.batch_stats}
feats = jax.eval_shape(lambda x: seg.apply_fn(v, x, train=False)['features'], batch['source_image'])
dt = set(_conv_dtypes(lambda x: seg.apply_fn(v, x, train=False), batch['source_image']))
dt |= set(_conv_dtypes(lambda x: d.apply_fn({'params': d.params}, x), jnp.zeros(feats.shape)))
print('convs', *dt)
new, m = steps.make_train_step(method, c, mesh)(states, parallel.global_batch(batch, mesh), jnp.int32(0))
print('losses', *{str(v.dtype) for k, v in m.items() if k.startswith('loss_')})
"""


def test_remat_keeps_parameter_names_and_gradients(toy_config):
  batch = random_batch(batch=2)
  toy_config.model.bn_mode = "frozen"  # the same numbers either way; remat must not change them
  plain, plain_new, plain_m = _step(toy_config, batch)
  toy_config.train.remat = True
  remat, remat_new, remat_m = _step(toy_config, batch)
  paths = lambda t: [(jax.tree_util.keystr(p), x.shape) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]]
  assert paths(plain["seg"].params) == paths(remat["seg"].params)
  for a, b in zip(jax.tree.leaves(plain_new), jax.tree.leaves(remat_new)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  seg = remat["seg"]
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p, x: seg.apply_fn({"params": p, "batch_stats": seg.batch_stats}, x,
                                                                  train=True, mutable=["batch_stats"])[0]
                                      ["main"].sum()))(seg.params, batch["source_image"]))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_float64_without_x64_is_a_clear_error(toy_config):
  from uda_jax import models  # pylint: disable=g-import-not-at-top
  from uda_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  toy_config.model.dtype = "float64"
  with pytest.raises(UserError, match="--jax_enable_x64"):
    models.build_segmenter(toy_config.model)
  toy_config.model.dtype = "float16"
  with pytest.raises(UserError, match="model.dtype='float16': choose one of float32, bfloat16, float64"):
    models.build_segmenter(toy_config.model)
