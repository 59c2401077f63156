"""Pixel-wise weighted adaptation on MRNet: GenMap and memory regularisation against hand computations, the
weighted losses against the unweighted ones, DisMap where eq. 6 puts it, the routing of every loss to its own
state, MRNet's decoder, the warm-up, and one clear error per bad option."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

import pixel_weighted as config_module
from step_utils import init, random_batch
from uda_jax import losses, methods, models, optim, steps
from uda_jax.errors import UserError
from uda_jax.methods import adaptsegnet, mrnet, pixel_weighted, pixel_weights
from uda_jax.models.discriminators import FeatureDiscriminator
from uda_jax.ops import resize_bilinear


@pytest.fixture
def config():
  """The toy preset at the suite's tiny width, the memory term on from the start."""
  c = config_module.get_config("toy")
  c.model.width, c.disc.channels, c.loss.memreg_start = 8, (8, 8, 8, 8), 0
  return c


def _losses(config, states, batch, mesh, which, rng=0):
  method = methods.get(config.method)

  def fn(params):
    def body(params, batch):
      out, aux = method.losses(params, states, batch, jax.random.key(rng), config, "data")
      return jax.lax.pmean(out[which] if which in out else aux["metrics"][which], "data")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())(params, batch)
  return fn


def _grads(config, states, batch, mesh, which):
  fn = _losses(config, states, batch, mesh, which)
  return jax.device_get(jax.jit(jax.grad(fn))({k: s.params for k, s in states.items()}))


def _zero(tree):
  return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def test_genmap_matches_eq_3_with_mu_at_the_threshold_edge():
  z = jnp.asarray([[[[3.0, 0.0, 0.0], [0.2, 0.0, 0.1], [1.0, 1.0, 1.0]]]])  # [1, 1, 3, 3]
  p = np.max(np.asarray(jax.nn.softmax(z, -1)), -1)[0, 0]
  t = float(p[0])  # the first pixel sits exactly at T: not above it, so the exp branch
  got = np.asarray(pixel_weights.genmap(z, t, 0.1))[0, 0]
  np.testing.assert_allclose(got, np.exp(-p) + 0.1, rtol=1e-6)
  got = np.asarray(pixel_weights.genmap(z, 0.5, 0.1))[0, 0]  # only the first pixel (p* = 0.909) is above 0.5
  np.testing.assert_allclose(got, [0.01 + 0.1, np.exp(-p[1]) + 0.1, np.exp(-p[2]) + 0.1], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pixel_weights.genmap(z, 1.0, 0.0))[0, 0], np.exp(-p), rtol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(pixel_weights.genmap(z, 0.5, 0.1) * jnp.arange(3.0)))(z)
  assert not np.any(np.asarray(grad))  # stop-gradient


def test_weighted_gan_loss_by_hand_on_both_grids():
  rng = np.random.default_rng(0)
  d = rng.normal(size=(2, 2, 3, 1)).astype(np.float32)  # D's patches
  w = rng.uniform(0.1, 1.1, size=(2, 4, 6)).astype(np.float32)  # image pixels, 2x each way
  bce = lambda x, y: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * y
  coarse = w.reshape(2, 2, 2, 3, 2).mean((2, 4))
  np.testing.assert_allclose(float(losses.gan_loss(d, 1.0, "vanilla", w, "disc")),
                             np.mean(coarse * bce(d[..., 0], 1.0)), rtol=1e-6)
  up = np.asarray(resize_bilinear(jnp.asarray(d), (4, 6)))[..., 0]
  np.testing.assert_allclose(float(losses.gan_loss(d, 0.0, "vanilla", w, "image")), np.mean(w * bce(up, 0.0)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(losses.gan_loss(d, 1.0, "ls", w, "image")), np.mean(w * (up - 1) ** 2), rtol=1e-6)
  ones = np.ones((2, 2, 3), np.float32)
  assert float(losses.gan_loss(d, 1.0, "vanilla", ones)) == float(losses.gan_loss(d, 1.0, "vanilla"))


def test_all_weights_one_reproduce_mrnet_exactly(config):
  """T tiny puts every pixel in the 0.01 branch; mu = 0.99 makes every weight 1: the weighted terms are MRNet's
  (on D's grid; on image pixels D's map is upsampled first, a different average)."""
  config.loss.genmap_threshold, config.loss.genmap_mu, config.loss.weight_grid = 1e-6, 0.99, "disc"
  config.loss.feature_disc = config.loss.dismap = False
  assert np.float32(0.01) + np.float32(0.99) == 1.0
  batch = random_batch(batch=2, h=64, w=64)
  _, mesh, states = init(config, batch)
  plain = config_module.get_config("toy,mrnet")
  plain.model.width, plain.disc.channels, plain.loss.memreg_start = 8, (8, 8, 8, 8), 0
  plain.loss.lambda_adv_main = config.loss.lambda_adv_main
  params = {k: s.params for k, s in states.items()}
  for name in ("seg", "d_main", "d_aux", "adv_main", "adv_aux", "memory"):
    a = jax.jit(_losses(config, states, batch, mesh, name))(params)
    b = jax.jit(_losses(plain, states, batch, mesh, name))(params)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6, err_msg=name)  # XLA may sum in another order


def test_dismap_multiplies_genmap_in_the_target_terms_only(config, monkeypatch):
  batch = random_batch(batch=1, h=64, w=64)
  _, mesh, states = init(config, batch)
  real = adaptsegnet.output_space

  def body(params, batch):
    seen = {}

    def spy(params, states, out_s, out_t, config, weight_t=None, weight_disc=True):
      seen.update(out_t=out_t, weights=weight_t, weight_disc=weight_disc)
      return real(params, states, out_s, out_t, config, weight_t, weight_disc)

    monkeypatch.setattr(adaptsegnet, "output_space", spy)
    pixel_weighted.losses(params, states, batch, jax.random.key(0), config, "data")
    out_t, d = seen["out_t"], states["d_feat"]
    gen = pixel_weights.genmap(adaptsegnet.ensemble_logits(out_t), 0.9, 0.1)
    dis = jax.nn.sigmoid(d.apply_fn({"params": d.params}, out_t["features"], (64, 64)))[..., 0]
    assert seen["weight_disc"] is True
    return seen["weights"]["main"], seen["weights"]["aux"], gen * dis, jax.nn.softmax(out_t["main"], -1)

  params = {k: s.params for k, s in states.items()}
  w_main, w_aux, want, p = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))(
      params, batch)
  np.testing.assert_allclose(w_main, want, rtol=1e-6)
  np.testing.assert_allclose(w_aux, want, rtol=1e-6)
  assert 0.1 < float(jnp.min(want)) and float(jnp.max(want)) < 1.1
  # D's source term stays unweighted: only the target half of its loss changes with the weights
  d = states["d_main"]
  full, _ = adaptsegnet.discriminator_loss(d, d.params, p, p, "vanilla", w_main)
  plain, _ = adaptsegnet.discriminator_loss(d, d.params, p, p, "vanilla")
  z = d.apply_fn({"params": d.params}, p)
  expect = float(plain) - 0.5 * float(losses.gan_loss(z, 1.0, "vanilla")) + 0.5 * float(
      losses.gan_loss(z, 1.0, "vanilla", w_main))
  np.testing.assert_allclose(float(full), expect, rtol=1e-6)


def test_every_loss_reaches_only_its_own_state(config):
  batch = random_batch(batch=2, h=64, w=64)
  _, mesh, states = init(config, batch)
  assert sorted(states) == ["d_aux", "d_feat", "d_main", "seg"]
  for name in ("seg", "d_main", "d_aux", "d_feat"):
    g = _grads(config, states, batch, mesh, name)
    assert not _zero(g[name]), name
    assert all(_zero(g[k]) for k in g if k != name), name
  g = _grads(config, states, batch, mesh, "adv_feat")  # eq. 8: the encoder fools D_aux, D_aux untouched
  assert _zero(g["d_feat"]) and not _zero(g["seg"]["backbone"])
  heads = {k for k, v in g["seg"].items() if not _zero(v)}
  assert heads == {"backbone"}  # D_aux reads concat(layer4, layer3): no decoder is involved


def test_memory_regularisation_by_hand_and_its_start_step(config):
  rng = np.random.default_rng(1)
  out = {k: jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32)) for k in ("main", "aux")}
  softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  m = softmax(np.asarray(out["main"]) + 0.5 * np.asarray(out["aux"]))
  kl = sum((m * (np.log(m) - np.log(softmax(np.asarray(out[k]))))).sum(-1) for k in ("main", "aux")).mean()
  config.loss.memreg_start = 10
  assert float(mrnet.memory_regularisation(out, 9, config)) == 0.0
  np.testing.assert_allclose(float(mrnet.memory_regularisation(out, 10, config)), kl, rtol=1e-5)
  grad = jax.grad(lambda o: mrnet.memory_regularisation(o, 10, config))(out)
  # the ensemble target is detached: the gradient is sum_heads softmax(head) - m per head
  np.testing.assert_allclose(np.asarray(grad["main"]), (softmax(np.asarray(out["main"])) - m) / m[..., 0].size,
                             atol=1e-7)


def test_mrnet_decoder_shapes_dropout_and_ensemble_prediction(config):
  c = config.model
  module = models.build_segmenter(c)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32))
  variables = module.init(jax.random.key(0), x, train=False)
  p = variables["params"]
  w = c.head_width
  l3, l4 = c.width * 16, c.width * 32
  shapes = lambda head: {k: v["conv"]["kernel"].shape for k, v in p[head].items() if "conv" in v}
  assert shapes("layer5") == {"branch_0": (1, 1, l3, w), **{f"branch_{i}": (3, 3, l3, w) for i in range(1, 5)},
                              "fuse": (3, 3, 5 * w, 2 * w), "classifier": (1, 1, 2 * w, 19)}
  assert shapes("layer6")["branch_0"] == (1, 1, l4 + l3, w) and "bias" not in p["layer6"]["classifier"]["conv"]
  assert set(p["layer6"]["se"]) == {"fc1", "fc2"} and p["layer6"]["se"]["fc1"]["kernel"].shape == (5 * w, 5 * w // 16)
  assert float(jnp.std(p["layer6"]["classifier"]["conv"]["kernel"])) == pytest.approx(0.001, rel=0.2)
  run = lambda key, train=True: module.apply(variables, x, train=train, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(key)})[0]
  a, b, a2 = run(1), run(2), run(1)
  assert a["main"].shape == (1, 9, 9, 19) and a["features"].shape == (1, 9, 9, l4 + l3)  # Caffe stem: 64 -> 9
  assert not np.allclose(a["main"], b["main"]) and np.array_equal(a["main"], a2["main"])
  assert np.array_equal(run(1, False)["main"], run(2, False)["main"])  # no dropout in evaluation
  e = run(1, False)
  np.testing.assert_allclose(models.prediction_logits(e, 0.5), e["main"] + 0.5 * e["aux"])


def test_feature_discriminator_at_image_size_equals_upsampling_the_features_first():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(1, 5, 7, 48)).astype(np.float32))
  d = FeatureDiscriminator((16, 8, 8))
  v = d.init(jax.random.key(0), f)
  got = d.apply(v, f, (33, 49))
  want = d.apply(v, resize_bilinear(f, (33, 49)))
  assert got.shape == (1, 33, 49, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_warmup_then_poly():
  c = config_module.get_config().optim
  lr = optim.warmup_poly(c)
  assert float(lr(0)) == pytest.approx(0.1 * 2e-4) and float(lr(2500)) == pytest.approx(0.55 * 2e-4)
  assert float(lr(5000)) == pytest.approx(2e-4 * (1 - 5000 / 100_000) ** 0.9)


def test_train_step_and_evaluation_use_the_ensemble(config):
  batch = random_batch(batch=2, h=64, w=64)
  method, mesh, states = init(config, batch)
  new, metrics = steps.make_train_step(method, config, mesh)(states, batch, 0)
  metrics = jax.device_get(metrics)
  assert 0.11 <= metrics["weight_mean"] <= 1.1 and metrics["memory"] > 0
  for name in states:
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[name].params),
                                                          jax.tree.leaves(new[name].params))), name
  seg = new["seg"]
  out = seg.apply_fn({"params": seg.params, "batch_stats": seg.batch_stats}, batch["target_image"], train=False)
  want = jnp.argmax(resize_bilinear(out["main"] + 0.5 * out["aux"], (64, 64)), -1)
  eval_batch = {"image": batch["target_image"], "label": np.asarray(want, np.int32), "mask": np.ones(2, bool)}
  for weight, same in ((0.5, True), (0.0, False)):
    body = lambda s, b, w=weight: steps.eval_step(s, b, num_classes=19, aux_weight=w)
    got = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs={"cm": P(), "pred": P("data")})(
        seg, eval_batch)
    assert np.array_equal(np.asarray(got["pred"]), np.asarray(want)) == same, weight


@pytest.mark.parametrize("field, value, message", [
    ("loss.genmap_threshold", 0.0, "T must lie in (0, 1]"), ("loss.genmap_threshold", 1.5, "T must lie in (0, 1]"),
    ("loss.genmap_mu", -0.1, "mu must be >= 0"), ("loss.genmap_from", "pixel", "genmap_from"),
    ("loss.weight_grid", "patch", "weight_grid"), ("model.head_width", 48, "multiple of 32"),
    ("model.head", "aspp", "model.head='mrnet'")])
def test_bad_options_one_clear_error(config, field, value, message):
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
    init(config, random_batch(batch=1, h=32, w=32))


def test_dismap_without_the_feature_discriminator_is_an_error(config):
  config.loss.feature_disc = False
  with pytest.raises(UserError, match="loss.dismap=True needs the feature-space discriminator"):
    init(config, random_batch(batch=1, h=32, w=32))
  config.model.arch = "deeplabv2_vgg16"
  config.loss.feature_disc = True
  with pytest.raises(UserError, match="needs model.arch='deeplabv2_resnet'"):
    init(config, random_batch(batch=1, h=32, w=32))


def test_visual_maps_are_the_weights_in_evaluation_mode(config):
  """The heat maps drawn beside the eval panels: GenMap + mu, DisMap and their product, from the eval-mode
  segmenter (no dropout), one image at a time, on the scale [0, 1 + mu] / [0, 1]."""
  batch = random_batch(batch=2, h=64, w=64)
  _, _, states = init(config, batch)
  images = list(np.asarray(batch["target_image"]))
  maps = methods.visual_maps(config, states, images)
  assert list(maps) == ["genmap", "dismap", "weight"]
  assert [maps[k][1] for k in maps] == [1.1, 1.0, 1.1]
  seg, d = states["seg"], states["d_feat"]
  out = seg.apply_fn({"params": seg.params, "batch_stats": seg.batch_stats}, batch["target_image"], train=False)
  gen = pixel_weights.genmap(resize_bilinear(adaptsegnet.ensemble_logits(out), (64, 64)), 0.9, 0.1)
  dis = jax.nn.sigmoid(d.apply_fn({"params": d.params}, out["features"], (64, 64)))[..., 0]
  np.testing.assert_allclose(maps["genmap"][0], gen, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps["dismap"][0], dis, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps["weight"][0], gen * dis, rtol=1e-5, atol=1e-6)
  config.loss.dismap = False
  assert list(methods.visual_maps(config, states, images)) == ["genmap"]
  assert methods.visual_maps(config, states, []) == {}
  config.method = "mrnet"  # another scheme with GenMap weights (loss.genmap_weights) draws them alike
  maps = methods.visual_maps(config, states, images)
  assert list(maps) == ["genmap"] and maps["genmap"][1] == 1.1
  np.testing.assert_allclose(maps["genmap"][0], gen, rtol=1e-5, atol=1e-6)
  config.loss.genmap_weights = False  # schemes without weights draw none
  assert methods.visual_maps(config, states, images) == {}


def test_heatmap_colours_on_a_fixed_scale(tmp_path):
  from uda_jax import visualize  # pylint: disable=g-import-not-at-top
  values = np.array([[0.0, 0.25, 0.5], [1.0, 2.0, -1.0]])
  rgb = visualize.heatmap(values, vmax=1.0)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
  np.testing.assert_array_equal(rgb[0, 0], visualize._HEAT[0])  # 0 -> the first anchor
  np.testing.assert_array_equal(rgb[0, 1], visualize._HEAT[1])  # vmax / 4 -> the second
  np.testing.assert_array_equal(rgb[1, 0], visualize._HEAT[-1])  # vmax -> the last
  np.testing.assert_array_equal(rgb[1, 1], rgb[1, 0])  # clipped above
  np.testing.assert_array_equal(rgb[1, 2], rgb[0, 0])  # and below
  np.testing.assert_array_equal(visualize.heatmap(values * 2, vmax=2.0), rgb)  # the scale is vmax, not the data
  mid = visualize.heatmap(np.array([[0.125]]), 1.0)[0, 0]  # halfway between the first two anchors
  np.testing.assert_array_equal(mid, np.round((visualize._HEAT[0] + visualize._HEAT[1]) / 2))
  image = np.zeros((4, 6, 3), np.float32)
  maps = {"genmap": (np.full((1, 2, 3), 0.5), 1.0), "weight": (np.ones((1, 2, 3)), 1.0)}
  panels = visualize.write_heatmaps(str(tmp_path), [image], maps, "imagenet")
  assert panels.shape == (1, 4, 18, 3)
  assert sorted(os.listdir(tmp_path)) == ["000_genmap.png", "000_maps.png", "000_weight.png"]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "000_weight.png")),
                                np.broadcast_to(visualize._HEAT[-1], (4, 6, 3)))
