"""FADA's loss composition: encodings, losses against hand-computed values, gradient routing, shapes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import fada as fada_config
from step_utils import init, random_batch
from test_adaptsegnet import _all_zero, _grad, _losses_on_one_device
from uda_jax import losses, methods, parallel, steps
from uda_jax.methods import fada


def _cfg(encoding, temperature=2.0, confidence=0.6):
  return ml_collections.ConfigDict(dict(encoding=encoding, temperature=temperature, confidence=confidence))


def test_soft_encoding_is_the_tempered_softmax_clipped_not_renormalised():
  logits = jnp.array([[[[4.0, 0.0, 0.0]]]])  # one pixel, 3 classes
  a, mask = fada.domain_knowledge(logits, _cfg("soft"))
  e = np.exp([2.0, 0.0, 0.0])
  p = e / e.sum()  # softmax(z / 2) = [0.787, 0.106, 0.106]
  np.testing.assert_allclose(a[0, 0, 0], [0.6, p[1], p[2]], rtol=1e-6)
  assert mask is None
  np.testing.assert_allclose(fada.encode(a, losses.SOURCE)[0, 0, 0], [0.6, p[1], p[2], 0, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(fada.encode(a, losses.TARGET)[0, 0, 0], [0, 0, 0, 0.6, p[1], p[2]], rtol=1e-6)


def test_hard_encoding_keeps_confident_pixels_only_and_binary_is_one_channel():
  logits = jnp.array([[[[4.0, 0.0, 0.0], [0.0, 0.5, 0.0]]]])  # a confident and an unsure pixel
  a, mask = fada.domain_knowledge(logits, _cfg("hard"))
  np.testing.assert_array_equal(a[0, 0], [[1, 0, 0], [0, 1, 0]])
  np.testing.assert_array_equal(mask[0, 0], [True, False])
  a, mask = fada.domain_knowledge(logits, _cfg("binary"))
  assert a.shape == (1, 1, 2, 1) and mask is None and bool(jnp.all(a == 1))


def test_soft_cross_entropy_by_hand():
  logits = jnp.array([[[[1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]]])
  targets = jnp.array([[[[0.5, 0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]]])
  log_p = np.log(np.exp([1.0, 2.0, 0.0, -1.0]) / np.exp([1.0, 2.0, 0.0, -1.0]).sum())
  first = -(0.5 * log_p[0] + 0.25 * log_p[1])  # targets need not sum to one (clipped encodings)
  second = np.log(4.0)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets), (first + second) / 2, rtol=1e-6)
  mask = jnp.array([[[True, False]]])  # hard encodings: the mean runs over the kept pixels only
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets, mask), first, rtol=1e-6)
  weight = jnp.array([[[2.0, 3.0]]])  # GenMap weights multiply each pixel's term inside the (masked) mean
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets, None, None, weight),
                             (2 * first + 3 * second) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets, mask, None, weight), 2 * first, rtol=1e-6)


def _toy(encoding="soft"):
  c = fada_config.get_config("toy")
  c.model.width = 8
  c.disc.width = 16
  c.loss.encoding = encoding
  c.init_from_required = ""  # these tests start the adversarial stage from scratch
  return c


@pytest.mark.parametrize("encoding", ["soft", "hard", "binary"])
def test_each_loss_reaches_only_its_own_state(encoding):
  config = _toy(encoding)
  if encoding == "hard":
    config.loss.confidence = 0.0  # keep every pixel: random init is never 0.9 confident
  batch = random_batch()
  method, mesh, states = init(config, batch)
  assert set(states) == {"seg", "d_main"}
  params = {k: s.params for k, s in states.items()}
  loss = _losses_on_one_device(method, config, states, batch, mesh)
  g_seg, g_d = _grad(loss, params, "seg"), _grad(loss, params, "d_main")
  assert _all_zero(g_seg["d_main"])  # the adversarial term leaves D untouched
  assert _all_zero(g_d["seg"])  # D's loss leaves the segmenter untouched
  assert not _all_zero(g_d["d_main"])
  # With no segmentation loss (all labels ignored) the adversarial term is all there is: it reaches the feature
  # extractor, and not the classifier, since the encodings are detached (as officially).
  batch["source_label"][:] = 255
  loss = _losses_on_one_device(method, config, states, batch, mesh)
  g_adv = _grad(loss, params, "seg")["seg"]
  assert not _all_zero(g_adv["backbone"]) and _all_zero(g_adv["layer6"])


def test_discriminator_sees_the_segmenters_features_and_outputs_2k_maps_at_image_size():
  for presets, channels in (("toy", 8 * 32), ("toy,vgg16", 1024)):
    c = fada_config.get_config(presets)
    c.model.width = 8
    c.init_from_required = ""
    shapes = {"source_image": (1, 64, 96, 3), "source_label": (1, 64, 96), "target_image": (1, 48, 80, 3)}
    states = jax.eval_shape(lambda c=c: methods.get("fada").create_states(c, jax.random.key(0), shapes))
    d = states["d_main"]
    assert d.params["D_0"]["conv"]["kernel"].shape == (3, 3, channels, c.disc.width)
    assert d.params["D_2"]["conv"]["kernel"].shape == (3, 3, c.disc.width, c.disc.width // 2)
    assert d.params["cls1"]["conv"]["kernel"].shape == (3, 3, c.disc.width // 2, 19)
    feats = jax.ShapeDtypeStruct((1, 6, 10, channels), jnp.float32)
    out = jax.eval_shape(lambda p, x: d.apply_fn({"params": p}, x, (48, 80)), d.params, feats)
    assert out.shape == (1, 48, 80, 38)


def test_train_step_updates_both_states_and_keeps_frozen_batchnorm():
  c = _toy()
  c.model.bn_mode = "frozen"
  batch = random_batch()
  method, mesh, states = init(c, batch)
  before = jax.device_get(states)
  new, metrics = steps.make_train_step(method, c, mesh)(states, parallel.global_batch(batch, mesh), jnp.int32(0))
  new = jax.device_get(new)
  assert set(metrics) >= {"loss_seg", "loss_d_main", "seg_main", "adv_main", "d_main_acc"}
  # At init D is near chance over its 2K channels: its loss is near log(2K) times the encoding's mass.
  assert all(np.isfinite(float(v)) for v in metrics.values())
  jax.tree.map(np.testing.assert_array_equal, new["seg"].batch_stats, before["seg"].batch_stats)
  for k in ("seg", "d_main"):
    assert int(new[k].step) == 1
    assert not np.allclose(jax.tree.leaves(new[k].params)[-1], jax.tree.leaves(before[k].params)[-1]), k


def test_fada_needs_the_pixel_discriminator_and_a_known_encoding():
  c = _toy()
  c.disc.arch = "fc"
  with pytest.raises(ValueError, match="disc.arch='pixel'"):
    init(c, random_batch())
  c = _toy("softer")
  with pytest.raises(ValueError, match="loss.encoding 'softer'"):
    init(c, random_batch())


def test_presets_chain_the_three_stages():
  src, adv, sd = (fada_config.get_config(s) for s in ("src", "adv", "sd"))
  assert (src.method, adv.method, sd.method) == ("source_only", "fada", "source_only")
  assert (src.optim.lr, adv.optim.lr, sd.optim.lr) == (5e-4, 2.5e-4, 5e-4)
  assert (src.data.batch_size, adv.data.batch_size, sd.data.batch_size) == (8, 4, 8)
  assert (src.train.num_steps, adv.train.num_steps, sd.optim.decay_steps) == (20_000, 40_000, 31_250)
  assert src.data.class_balanced and adv.data.class_balanced and not sd.data.class_balanced
  assert adv.init_from_required and not src.init_from_required
  assert (src.model.bn_mode, src.model.bn_eps, sd.model.bn_mode, sd.optim.train_bn) == ("frozen", 0.0, "sync", True)
  assert fada_config.get_config("synthia,sd").model.bn_mode == "frozen"  # SYNTHIA's SD config keeps FrozenBN
  assert fada_config.get_config("clip_0.7").loss.confidence == 0.7
  with pytest.raises(ValueError, match="name one stage"):
    fada_config.get_config("src,adv")


def test_benchmark_times_the_adversarial_step_with_different_domain_sizes():
  from uda_jax import bench  # pylint: disable=g-import-not-at-top
  c = fada_config.get_config("toy")  # init_from_required is ignored: the benchmark needs no weights
  c.model.width, c.disc.width, c.data.batch_size = 8, 16, 1
  r = bench.benchmark(c, (32, 64), 1, (40, 72))
  assert r["method"] == "fada" and r["size"] == "32x64 + 40x72" and r["batch"] == "1+1"
  assert r["step_s"] > 0 and r["gflops_per_step"] > 0
  compile_only = bench.benchmark(c, (32, 64), 0)
  assert compile_only["gflops_per_step"] > 0 and compile_only["mfu"].startswith("n/a")
  assert "step_s" not in compile_only and compile_only["peak_device_memory_gib"] > 0
