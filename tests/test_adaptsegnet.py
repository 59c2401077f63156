"""AdaptSegNet's loss composition: each loss reaches exactly the parameters the official code updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from step_utils import init, random_batch
import adaptsegnet
from uda_jax import methods, parallel, steps


def _losses_on_one_device(method, config, states, batch, mesh):
  """The per-state loss functions of the scheme, differentiable w.r.t. all parameters."""
  def fn(params, which):
    def body(params, batch):
      out, _ = method.losses(params, states, batch, jax.random.key(0), config, "data")
      return jax.lax.pmean(out[which], "data")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())(params, batch)
  return fn


def _grad(loss, params, which):
  return jax.jit(jax.grad(lambda p: loss(p, which)))(params)


def _all_zero(tree):
  return all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("preset", ["multi", "feature"])
def test_each_loss_reaches_only_its_own_state(toy_config, preset):
  if preset == "feature":
    toy_config.model.multi_level = False
    toy_config.disc.input = "features"
  batch = random_batch(h=256, w=256) if preset == "feature" else random_batch()
  method, mesh, states = init(toy_config, batch)
  params = {k: s.params for k, s in states.items()}
  loss = _losses_on_one_device(method, toy_config, states, batch, mesh)
  discs = sorted(k for k in states if k.startswith("d_"))
  assert discs == (["d_aux", "d_main"] if preset == "multi" else ["d_main"])
  g_seg = _grad(loss, params, "seg")
  assert not _all_zero(g_seg["seg"])
  for d in discs:  # the adversarial term does not update the discriminators
    assert _all_zero(g_seg[d]), d
    g_d = _grad(loss, params, d)
    assert _all_zero(g_d["seg"]), d  # the discriminator loss leaves the segmenter untouched
    assert not _all_zero(g_d[d])
    assert all(_all_zero(g_d[o]) for o in discs if o != d)  # and the other level's discriminator


def test_adversarial_weight_changes_the_segmenter_only(toy_config):
  batch = random_batch()
  results = []
  for lam in (1e-3, 10.0):
    toy_config.loss.lambda_adv_main = lam
    method, mesh, states = init(toy_config, batch)
    step = steps.make_train_step(method, toy_config, mesh)
    new, metrics = step(states, parallel.global_batch(batch, mesh), jnp.int32(0))
    results.append((jax.device_get(new), metrics))
  (a, _), (b, _) = results
  for d in ("d_main", "d_aux"):
    jax.tree.map(np.testing.assert_array_equal, a[d].params, b[d].params)
  assert not np.allclose(a["seg"].params["layer6"]["conv2d_list_0"]["conv"]["kernel"],
                         b["seg"].params["layer6"]["conv2d_list_0"]["conv"]["kernel"])


def test_train_step_updates_params_stats_and_keeps_bn_affine(toy_config):
  batch = random_batch()
  method, mesh, states = init(toy_config, batch)
  before = jax.device_get(states)
  step = steps.make_train_step(method, toy_config, mesh)
  new, metrics = step(states, parallel.global_batch(batch, mesh), jnp.int32(0))
  new = jax.device_get(new)
  assert set(metrics) >= {"loss_seg", "loss_d_main", "loss_d_aux", "seg_main", "seg_aux", "adv_main"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # D at init is ~chance: its loss is near log 2
  assert abs(float(metrics["loss_d_main"]) - np.log(2)) < 0.1
  bn = lambda s: s.params["backbone"]["bn1"]
  jax.tree.map(np.testing.assert_array_equal, bn(new["seg"]), bn(before["seg"]))
  assert not np.allclose(new["seg"].batch_stats["backbone"]["bn1"]["mean"],
                         before["seg"].batch_stats["backbone"]["bn1"]["mean"])
  assert int(new["seg"].step) == 1 and int(new["d_main"].step) == 1
  for k in new:
    assert not np.allclose(jax.tree.leaves(new[k].params)[-1], jax.tree.leaves(before[k].params)[-1]), k


def test_source_only_has_no_discriminators(toy_config):
  toy_config.method = "source_only"
  batch = random_batch()
  method, mesh, states = init(toy_config, batch)
  assert set(states) == {"seg"}
  new, metrics = steps.make_train_step(method, toy_config, mesh)(states, parallel.global_batch(batch, mesh),
                                                                  jnp.int32(0))
  np.testing.assert_allclose(float(metrics["loss_seg"]),
                             float(metrics["seg_main"]) + 0.1 * float(metrics["seg_aux"]), rtol=1e-5)


@pytest.mark.parametrize("presets,channels", [("toy,feature", 8 * 32), ("toy,feature,vgg16", 1024)])
def test_feature_discriminator_takes_the_backbones_features(presets, channels):
  """The feature-level D's first conv is sized from the segmenter's features: ResNet layer4 (width * 32), VGG fc7."""
  c = adaptsegnet.get_config(presets)
  c.model.width = 8
  shapes = {"source_image": (1, 256, 512, 3), "source_label": (1, 256, 512), "target_image": (1, 256, 512, 3)}
  states = jax.eval_shape(lambda: methods.get(c.method).create_states(c, jax.random.key(0), shapes))
  assert states["d_main"].params["conv1"]["conv"]["kernel"].shape == (4, 4, channels, c.disc.channels[0])
