"""Issue 13 item 5, "none of the CPU changes slows the GPU step", checked without a GPU: traced as on an
accelerator (jax.default_backend() answering 'gpu' or 'tpu'), each scheme's train step and the evaluation step
are the very program the CPU traces with every CPU-only rewrite and kernel switched off, the program of before
those changes. The CPU default traces another program, so the comparison is not vacuous; a new CPU-only path
that forgets its backend gate fails here."""

import jax
import pytest

import adaptsegnet as adaptsegnet_config
import fada as fada_config
import jal_wtm as jal_wtm_config
import lsdseg as lsdseg_config
import pixel_weighted as pixel_weighted_config
from step_utils import random_batch
from uda_jax import methods, parallel, steps

# Every UDA_JAX_* switch of a CPU-only rewrite or kernel (uda_jax/models/layers.py, uda_jax/kernels/).
CPU_SWITCHES = ("UDA_JAX_BN_KERNEL", "UDA_JAX_CONV_KERNEL", "UDA_JAX_CONV1X1_MATMUL", "UDA_JAX_NARROW_CONV_MATMUL",
                "UDA_JAX_STRIDED_CONV_S2D", "UDA_JAX_SUBPIXEL_DECONV")


def _tiny(config):
  config.model.width, config.init_from_required = 8, ""
  if "channels" in config.disc:
    config.disc.channels = (8, 8, 8, 8)
  return config


CONFIGS = {
    "adaptsegnet": lambda: _tiny(adaptsegnet_config.get_config("toy")),
    "adaptsegnet_vgg_ls": lambda: _tiny(adaptsegnet_config.get_config("toy,vgg16,lsgan")),
    "fada": lambda: _tiny(fada_config.get_config("toy,adv")),
    "jal_wtm": lambda: _tiny(jal_wtm_config.get_config("toy")),
    "lsdseg": lambda: _tiny(lsdseg_config.get_config("toy")),
    "pixel_weighted": lambda: _tiny(pixel_weighted_config.get_config("toy")),
}


def _programs(config, monkeypatch, backend, forced):
  """The train step's and the eval step's jaxprs, traced with jax.default_backend() answering `backend` and
  every CPU switch set to `forced` ('' = unset), on abstract states and batches (tracing only, no compiling)."""
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  for name in CPU_SWITCHES:
    monkeypatch.setenv(name, forced)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       random_batch(batch=1, h=64, w=64, classes=config.model.num_classes))
  method, mesh = methods.get(config.method), parallel.make_mesh()
  shapes = {**{k: v.shape for k, v in batch.items()}, "axis_name": parallel.AXIS}
  states = jax.eval_shape(lambda: method.create_states(config, jax.random.key(0), shapes))
  train = jax.make_jaxpr(steps.make_train_step(method, config, mesh))(states, batch, 0)
  label = batch["source_label"]
  eval_batch = {"image": batch["target_image"], "label": label, "mask": jax.ShapeDtypeStruct(label.shape[:1], bool)}
  evaluation = jax.make_jaxpr(steps.make_eval_step(config, mesh))(states["seg"], eval_batch)
  return str(train), str(evaluation)


@pytest.mark.parametrize("scheme", sorted(CONFIGS))
def test_accelerators_trace_the_program_without_the_cpu_rewrites(scheme, monkeypatch):
  config = CONFIGS[scheme]()
  before = _programs(config, monkeypatch, "cpu", "0")
  for backend in ("gpu", "tpu") if scheme == "adaptsegnet" else ("gpu",):  # one gate: default_backend() != 'cpu'
    assert _programs(config, monkeypatch, backend, "") == before, backend
  assert _programs(config, monkeypatch, "cpu", "")[0] != before[0]  # the rewrites are what the switches control
