"""LSD-seg: its losses against hand computations, every loss routed to its own network, dropout tied to (seed,
step, device), the frozen upsamplers, FCN-8s / G / D sizes against the official arithmetic, the optimizers, and
one clear error per bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import lsdseg as config_module
from step_utils import init, random_batch
from uda_jax import losses, optim, parallel, steps
from uda_jax.data.normalization import to_unit
from uda_jax.errors import UserError
from uda_jax.methods import lsdseg
from uda_jax.models import fcn8s, lsd_networks


@pytest.fixture
def config():
  c = config_module.get_config("toy")
  c.model.width, c.model.fc_dim, c.gen.width, c.disc.width = 8, 32, 8, 8
  return c


@pytest.fixture(scope="module")
def setup():
  c = config_module.get_config("toy")
  c.model.width, c.model.fc_dim, c.gen.width, c.disc.width = 8, 32, 8, 8
  batch = random_batch(1, 32, 64)
  method, mesh, states = init(c, batch)
  return c, batch, jax.device_get(states)


def _loss_fn(c, states, batch, rng):
  return jax.jit(lambda params: lsdseg.losses(params, states, batch, rng, c))


def test_summed_cross_entropy_and_label_downsampling_by_hand():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 3, 4)), jnp.float32)
  labels = np.array([[[0, 1, 255], [3, 2, 1]], [[255, 255, 0], [1, 1, 1]]])
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  by_hand = -sum(logp[n, i, j, labels[n, i, j]] for n in range(2) for i in range(2) for j in range(3)
                 if labels[n, i, j] != 255) / 2  # summed over pixels, divided by the batch (trainer_LSD.py)
  assert float(losses.summed_cross_entropy(logits, jnp.asarray(labels))) == pytest.approx(by_hand, rel=1e-6)
  y = np.arange(2 * 8 * 16).reshape(2, 8, 16) % 250
  np.testing.assert_array_equal(lsdseg.labels_for_d(y, (2, 4)), y[:, 2::4, 2::4])  # pixel centres: 4i + 2
  pil = np.asarray(Image.fromarray(y[0].astype(np.uint8)).resize((4, 2), Image.NEAREST))
  np.testing.assert_array_equal(lsdseg.labels_for_d(y, (2, 4))[0], pil)
  # the official transform_label_forD: PIL size (width=2, height=4), then the 4x2 result read into the 2x4 map
  official = np.asarray(Image.fromarray(y[0].astype(np.uint8)).resize((2, 4), Image.NEAREST)).reshape(2, 4)
  np.testing.assert_array_equal(lsdseg.labels_for_d(y, (2, 4), "official_transposed")[0], official)


def test_every_loss_is_the_official_formula(setup):
  """D, G and F's losses recomputed term by term from the networks (dropout masks shared as the method shares
  them), against the method's composition."""
  c, batch, states = setup
  rng = jax.random.key(3)
  per_state, aux = _loss_fn(c, states, batch, rng)({k: s.params for k, s in states.items()})
  m = {k: float(v) for k, v in aux["metrics"].items()}
  r = {k: jax.random.fold_in(rng, i) for i, k in enumerate(("f_s", "f_t", "g_s", "g_t", "xs", "gs", "xt", "gt"))}
  seg, gen, disc = states["seg"], states["gen"], states["disc"]
  F = lambda x, k: seg.apply_fn({"params": seg.params}, x, train=True, rngs={"dropout": r[k]})
  G = lambda o, k: gen.apply_fn({"params": gen.params}, o["fc7"], o["pool4"], o["pool3"], train=True,
                                rngs={"dropout": r[k]})
  D = lambda x, k: disc.apply_fn({"params": disc.params}, x, train=True, rngs={"dropout": r[k]})
  ce = lambda z, y: float(losses.summed_cross_entropy(z, jnp.broadcast_to(y, z.shape[:3])))
  o_s, o_t = F(batch["source_image"], "f_s"), F(batch["target_image"], "f_t")
  x_s, x_t = (to_unit(batch[k], "caffe_bgr") for k in ("source_image", "target_image"))
  g_s, g_t = G(o_s, "g_s"), G(o_t, "g_t")
  z = {"xs": D(x_s, "xs"), "gs": D(g_s, "gs"), "xt": D(x_t, "xt"), "gt": D(g_t, "gt")}
  y = lsdseg.labels_for_d(batch["source_label"], z["xs"]["aux"].shape[1:3])
  l_d = ce(z["xs"]["domain"], 0) + ce(z["gs"]["domain"], 1) + ce(z["xt"]["domain"], 2) + ce(z["gt"]["domain"], 3)
  l_d += ce(z["xs"]["aux"], y)
  rec = float(jnp.mean(jnp.abs(g_s - x_s)) + jnp.mean(jnp.abs(g_t - x_t)))
  l_g = ce(z["gs"]["aux"], y) + 0.1 * (ce(z["gs"]["domain"], 0) + ce(z["gt"]["domain"], 2)) + 1.0 * rec
  l_f = (ce(o_s["main"], batch["source_label"]) + 0.1 * (ce(z["gs"]["domain"], 2) + ce(z["gt"]["domain"], 0))
         + 0.1 * ce(z["gs"]["aux"], y))
  assert float(per_state["disc"]) == pytest.approx(l_d, rel=1e-5)
  assert float(per_state["gen"]) == pytest.approx(l_g, rel=1e-5)
  assert float(per_state["seg"]) == pytest.approx(l_f, rel=1e-5)
  assert m["rec"] == pytest.approx(rec, rel=1e-5) and 0 <= m["d_acc"] <= 1


def test_each_loss_reaches_only_its_own_network(setup):
  c, batch, states = setup
  params = {k: s.params for k, s in states.items()}
  rng = jax.random.key(1)
  for name in ("seg", "gen", "disc"):
    grads = jax.jit(jax.grad(lambda p: lsdseg.losses(p, states, batch, rng, c)[0][name]))(params)
    for other, g in grads.items():
      norm = float(optax_norm(g))
      assert (norm > 0) == (other == name), (name, other, norm)


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_dropout_repeats_for_the_same_seed_step_device_and_differs_otherwise(setup):
  c, batch, states = setup
  fn = _loss_fn(c, states, batch, None)
  params = {k: s.params for k, s in states.items()}
  key = lambda step, device: jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), step), device)
  rec = lambda k: float(jax.jit(lambda p, k: lsdseg.losses(p, states, batch, k, c)[1]["metrics"]["rec"])(params, k))
  del fn
  assert rec(key(0, 0)) == rec(key(0, 0))
  assert rec(key(0, 0)) != rec(key(1, 0)) and rec(key(0, 0)) != rec(key(0, 1))


def test_step_updates_three_states_and_leaves_the_upsamplers_bilinear(setup):
  c, batch, states = setup
  mesh = parallel.make_mesh()
  from uda_jax import methods  # pylint: disable=g-import-not-at-top
  step = steps.make_train_step(methods.get("lsdseg"), c, mesh)
  fresh = jax.device_put(states, parallel.replicated(mesh))
  new, metrics = step(fresh, parallel.global_batch(batch, mesh), jnp.asarray(0, jnp.int32))
  new = jax.device_get(new)
  assert all(float(v) > 0 for k, v in metrics.items() if k.startswith("finite/"))
  for name in ("seg", "gen", "disc"):
    moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(new[name].params),
                                                   jax.tree.leaves(states[name].params))]
    assert max(moved) > 0, name
  for up in ("upscore2", "upscore_pool4", "upscore8"):
    np.testing.assert_array_equal(new["seg"].params[up]["kernel"], states["seg"].params[up]["kernel"])
    k = states["seg"].params[up]["kernel"]
    np.testing.assert_array_equal(k, fcn8s.ConvTranspose(19, k.shape[0], 2).init(
        jax.random.key(0), jnp.zeros((1, 2, 2, 19)))["params"]["kernel"])


@pytest.mark.parametrize("hw", [(64, 128), (96, 160), (128, 256), (320, 640)])
def test_fcn8s_generator_and_discriminator_sizes_follow_the_official_arithmetic(hw):
  h, w = hw
  model = fcn8s.FCN8s(num_classes=3, fc_dim=8, width=8)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], jnp.zeros((1, h, w, 3)))
  sizes = lsd_networks.fcn8s_sizes(h, w)
  assert out["main"].shape[1:3] == (h, w)
  assert out["pool3"].shape[1:3] == sizes["pool3"] and out["pool4"].shape[1:3] == sizes["pool4"]
  assert out["fc7"].shape[1:3] == sizes["fc7"]
  g = lsd_networks.Generator(width=4)
  z = lambda k: jnp.zeros(out[k].shape)
  fake = jax.eval_shape(lambda: g.init_with_output(jax.random.key(0), z("fc7"), z("pool4"), z("pool3"))[0])
  assert fake.shape[1:3] == lsd_networks.generator_output_size(h, w) == (h, w)
  d = lsd_networks.PatchDiscriminator(num_classes=3, width=4)
  grid = jax.eval_shape(lambda: d.init_with_output(jax.random.key(0), jnp.zeros((1, h, w, 3)))[0])
  assert grid["domain"].shape[1:] == (*lsd_networks.discriminator_grid(h, w), 4)
  assert grid["aux"].shape[1:] == (*lsd_networks.discriminator_grid(h, w), 3)
  # official at 320x640: pool3 65x105, pool4 33x53, fc7 11x21, D 40x80
  if hw == (320, 640):
    assert (sizes["pool3"], sizes["pool4"], sizes["fc7"]) == ((65, 105), (33, 53), (11, 21))
    assert lsd_networks.discriminator_grid(h, w) == (40, 80)


def test_a_size_the_generator_cannot_give_back_is_one_clear_error(config):
  config.data.source_aug = config.data.target_aug = None
  batch = random_batch(1, 48, 80)
  with pytest.raises(UserError, match=r"cannot reconstruct a 48x80 source image.*multiples of 32"):
    init(config, batch)


def test_optimizers_as_run():
  c = config_module.get_config()
  params = {"conv1_1": {"conv": {"kernel": jnp.ones((1,)), "bias": jnp.ones((1,))}},
            "upscore8": {"kernel": jnp.ones((1,))}}
  tx = optim.segmenter_sgd(c.optim, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["conv1_1"]["conv"]["kernel"][0]) == pytest.approx(-1e-5, rel=1e-3)  # Adam: ~ -lr
  assert float(updates["conv1_1"]["conv"]["bias"][0]) == pytest.approx(-2e-5, rel=1e-3)  # biases at 2x
  assert float(updates["upscore8"]["kernel"][0]) == 0.0
  schedule = optim.segmenter_schedule(c.optim)
  assert [float(schedule(s)) for s in (0, 23_799, 23_800, 47_600)] == pytest.approx([1e-5, 1e-5, 1e-6, 1e-7])
  d = optim.discriminator_adam(c.optim)
  p = {"w": jnp.ones(())}
  u, _ = d.update({"w": jnp.ones(())}, d.init(p), p)
  assert float(u["w"]) == pytest.approx(-1e-4, rel=1e-3)
  assert (c.optim.d_b1, c.optim.d_b2, c.optim.d_schedule) == (0.7, 0.999, "constant")


def test_init_from_weights_of_another_architecture_is_one_clear_error(config, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from uda_jax.tools import init_from  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "resnet")
  ocp.StandardCheckpointer().save(path, {"params": {"backbone": {"conv1": {"kernel": np.ones((7, 7, 3, 8))}}},
                                         "batch_stats": {}})
  ocp.StandardCheckpointer().wait_until_finished() if hasattr(ocp.StandardCheckpointer, "wait_until_finished") else None
  _, _, states = init(config, random_batch(1, 32, 64))
  with pytest.raises(UserError, match="weights of another architecture.*backbone/conv1"):
    init_from.load_states(path, states)
