"""GenMap weights (methods/pixel_weights.py) on the target adversarial terms of the other schemes: every such term
scales with the weights and nothing else does, the weights carry no gradient, and schemes they do not fit refuse."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import adaptsegnet as adaptsegnet_config
import fada as fada_config
import jal_wtm as jal_wtm_config
import pixel_weighted as pixel_weighted_config
import lsdseg as lsdseg_config
from step_utils import init, random_batch
from uda_jax import methods
from uda_jax.errors import UserError
from uda_jax.methods import jal_wtm, pixel_weights


def _config(scheme, extra=""):
  c = {"adaptsegnet": lambda: adaptsegnet_config.get_config("toy" + extra),
       "fada": lambda: fada_config.get_config("toy,adv" + extra),
       "jal_wtm": lambda: jal_wtm_config.get_config("toy" + extra),
       "jal_wtm_ls": lambda: jal_wtm_config.get_config("toy" + extra),
       "mrnet": lambda: pixel_weighted_config.get_config("toy,mrnet")}[scheme]()
  c.model.width, c.disc.channels, c.disc.width = 8, (8, 8, 8, 8), 16
  c.init_from_required = ""
  c.loss.memreg_start = 0
  c.loss.weight_grid = "disc"  # a constant weight map then averages to itself on D's grid
  if scheme.endswith("_ls"):
    c.loss.gan = "ls"  # least-squares terms, JAL's and WTM's included
  return c


def _all_losses(config, states, batch, mesh):
  method = methods.get(config.method)

  def body(params, batch):
    per_state, aux = method.losses(params, states, batch, jax.random.key(0), config, "data")
    return jax.lax.pmean({**{f"loss_{k}": v for k, v in per_state.items()}, **aux["metrics"]}, "data")

  params = {k: s.params for k, s in states.items()}
  out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))(params, batch)
  return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("scheme", ["adaptsegnet", "fada", "jal_wtm", "jal_wtm_ls", "mrnet"])
def test_constant_weights_scale_exactly_the_target_adversarial_terms(scheme):
  """T tiny puts every pixel in GenMap's 0.01 branch, so mu sets a constant weight w = 0.01 + mu: at w = 1 every
  loss equals the unweighted scheme's; each adversarial term of the segmenter is w times its unweighted value;
  each state's loss is linear in w, through the discriminators only with loss.weight_disc."""
  plain = _config(scheme)
  batch = random_batch(batch=2, h=64, w=64, classes=plain.model.num_classes)
  _, mesh, states = init(plain, batch)
  base = _all_losses(plain, states, batch, mesh)

  def weighted(mu, weight_disc=True):
    c = _config(scheme)
    c.loss.genmap_weights, c.loss.genmap_threshold, c.loss.genmap_mu = True, 1e-6, mu
    c.loss.weight_disc = weight_disc
    return _all_losses(c, states, batch, mesh)

  w1, w2, w3, w2_seg_only = weighted(0.99), weighted(1.99), weighted(2.99), weighted(1.99, weight_disc=False)
  assert np.float32(0.01) + np.float32(0.99) == 1 and np.float32(0.01) + np.float32(1.99) == 2
  adversarial = [k for k in base if k.startswith("adv_")]
  assert adversarial and w1["weight_mean"] == 1 and w2["weight_mean"] == 2
  for k, v in base.items():
    np.testing.assert_allclose(w1[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  for k in adversarial:
    np.testing.assert_allclose(w2[k], 2 * base[k], rtol=1e-5, err_msg=k)
  for k in (k for k in base if k.startswith("loss_")):
    step = w2[k] - w1[k]
    np.testing.assert_allclose(w3[k] - w2[k], step, rtol=1e-3, atol=1e-6, err_msg=k)
    assert step > 0, (k, step)  # every state's loss has a target adversarial term
    if k.startswith("loss_d"):  # a discriminator's target half: weighted only with weight_disc
      assert w2_seg_only[k] == pytest.approx(base[k], rel=1e-6), k
    else:
      assert w2_seg_only[k] == pytest.approx(w2[k], rel=1e-6), k


@pytest.mark.parametrize("scheme", ["adaptsegnet", "fada", "jal_wtm"])
def test_weights_carry_no_gradient_into_the_segmenter_from_a_discriminator(scheme):
  # GenMap reads the segmenter's own target prediction; a discriminator's weighted loss must still reach only it.
  c = _config(scheme, ",genmap")  # the preset
  c.loss.genmap_threshold = 0.5  # for weights that vary more on an untrained model
  batch = random_batch(batch=2, h=64, w=64, classes=c.model.num_classes)
  method, mesh, states = init(c, batch)

  def d_loss(params):
    def body(params, batch):
      per_state, aux = method.losses(params, states, batch, jax.random.key(0), c, "data")
      return jax.lax.pmean((per_state["d_main"], aux["metrics"]["weight_mean"]), "data")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())(params, batch)

  params = {k: s.params for k, s in states.items()}
  grads, mean = jax.jit(jax.grad(d_loss, has_aux=True))(params)
  assert 0.11 < float(mean) < 1.1 - 1e-3  # weights that are neither all 0.01 + mu nor all 1 + mu
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["seg"]))
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["d_main"]))


def test_target_weights_are_genmap_of_the_ensemble_the_prediction_or_each_level():
  c = _config("adaptsegnet")
  out = {"main": jax.random.normal(jax.random.key(0), (1, 4, 5, 3)),
         "aux": jax.random.normal(jax.random.key(1), (1, 4, 5, 3))}
  assert pixel_weights.target_weights(out, c) is None  # off by default
  c.loss.genmap_weights, c.loss.genmap_threshold, c.loss.genmap_mu = True, 0.5, 0.1
  got = pixel_weights.target_weights(out, c)
  want = pixel_weights.genmap(out["main"] + 0.5 * out["aux"], 0.5, 0.1)
  for level in ("main", "aux"):
    np.testing.assert_array_equal(got[level], want)
  c.loss.genmap_from = "level"
  got = pixel_weights.target_weights(out, c)
  np.testing.assert_array_equal(got["aux"], pixel_weights.genmap(out["aux"], 0.5, 0.1))
  c.loss.genmap_from = "prediction"  # what the run predicts with: z_main alone at AdaptSegNet's eval.aux_weight=0
  for aux_weight, logits in ((0.0, out["main"]), (0.5, out["main"] + 0.5 * out["aux"])):
    c.eval.aux_weight = aux_weight
    got = pixel_weights.target_weights(out, c)
    for level in ("main", "aux"):
      np.testing.assert_array_equal(got[level], pixel_weights.genmap(logits, 0.5, 0.1))
  c.model.multi_level = False  # a single-level model's ensemble is its one map
  c.loss.genmap_from = "ensemble"
  got = pixel_weights.target_weights({"main": out["main"]}, c)
  assert list(got) == ["main"]
  np.testing.assert_array_equal(got["main"], pixel_weights.genmap(out["main"], 0.5, 0.1))


@pytest.mark.parametrize("make, fields, message", [
    (lambda: adaptsegnet_config.get_config("toy,source_only"), {"genmap_weights": True},
     "not of method 'source_only'"),
    (lambda: lsdseg_config.get_config("toy"), {"genmap_weights": True}, "not of method 'lsdseg'"),
    (lambda: _config("adaptsegnet"), {"genmap_weights": True, "genmap_mu": -1.0},
     "loss.genmap_mu=-1.0: mu must be >= 0"),
    (lambda: _config("jal_wtm"), {"genmap_weights": True, "weight_grid": "patch"}, "loss.weight_grid='patch'"),
    (lambda: pixel_weighted_config.get_config("toy"), {"genmap_weights": False}, "always weights by GenMap")])
def test_schemes_the_weights_do_not_fit_refuse_them_in_one_line(make, fields, message):
  c = make()
  c.model.width = 8
  c.loss.update(fields)
  with pytest.raises(UserError, match=message):
    init(c, random_batch(batch=1, h=32, w=32))


# Which level's weights each loss and metric may depend on (the rest: neither). JAL's eq. 5 fools D1 with Dec2's
# map, so it takes Dec2's ('main') weights; Dwtm is trained on the lowest transferred level (Dec1, 'aux').
_PER_LEVEL = {
    "adaptsegnet": {"adv_main": {"main"}, "adv_aux": {"aux"}, "loss_d_main": {"main"}, "loss_d_aux": {"aux"},
                    "loss_seg": {"main", "aux"}, "weight_mean": {"main"}},
    "jal_wtm": {"adv_main": {"main"}, "adv_aux": {"aux"}, "loss_d_main": {"main"}, "loss_d_aux": {"aux"},
                "adv_jal": {"main"}, "loss_seg": {"main", "aux"}, "weight_mean": {"main"}, "loss_d_wtm": {"aux"},
                "adv_wtm_main": {"main"}, "adv_wtm_aux": {"aux"}, "loss_wtm": {"main", "aux"}},
    "fada": {"adv_main": {"main"}, "loss_seg": {"main"}, "loss_d_main": {"main"}, "weight_mean": {"main"}},
}
_PER_LEVEL["mrnet"] = _PER_LEVEL["adaptsegnet"]


@pytest.mark.parametrize("scheme", sorted(_PER_LEVEL))
def test_each_term_takes_its_own_levels_weights(scheme, monkeypatch):
  """Distinct constant weights per level, moved one level at a time: each term moves with exactly the level whose
  map it judges (a main / aux swap anywhere, the segmenter's or a discriminator's side, fails)."""
  c = _config(scheme)
  c.loss.genmap_weights = True
  batch = random_batch(batch=2, h=64, w=64, classes=c.model.num_classes)
  _, mesh, states = init(c, batch)

  def run(main, aux):
    const = {"main": main, "aux": aux}
    monkeypatch.setattr(pixel_weights, "target_weights",  # this device's share: [N,H,W] of its own logits
                        lambda out_t, config, predicted=None: {
                            l: jax.numpy.full(out_t[l].shape[:3], const[l]) for l in out_t if l in const})
    return _all_losses(c, states, batch, mesh)

  base, main_moved, aux_moved = run(1.0, 1.5), run(2.0, 1.5), run(1.0, 3.0)
  expected = _PER_LEVEL[scheme]
  assert set(expected) <= set(base), sorted(set(expected) - set(base))
  for k, v in base.items():
    moved = {l for l, other in (("main", main_moved), ("aux", aux_moved))
             if not np.isclose(other[k], v, rtol=1e-6, atol=1e-7)}
    assert moved == expected.get(k, set()), (k, moved)


def test_a_combination_says_at_start_that_it_weights_by_genmap(caplog):
  with caplog.at_level("INFO"):
    pixel_weights.check(_config("adaptsegnet"))  # no weights
    pixel_weights.check(pixel_weighted_config.get_config("toy"))  # the scheme itself
  assert "GenMap" not in caplog.text
  c = _config("adaptsegnet")
  c.loss.genmap_weights, c.loss.genmap_from = True, "prediction"
  with caplog.at_level("INFO"):
    pixel_weights.check(c)
  assert "GenMap weights on the target adversarial terms of 'adaptsegnet'" in caplog.text
  assert "T=0.9, mu=0.1, from prediction" in caplog.text


def test_jal_wtm_reads_prediction_weights_from_the_transferred_decoder(monkeypatch):
  """genmap_from='prediction' on JAL + WTM: the weights come from DecT2's logits, what the run predicts with
  (jal_wtm.inference_segmenters), once its WTM has moved from identity."""
  c = _config("jal_wtm")
  c.loss.genmap_weights, c.loss.genmap_from, c.loss.genmap_threshold = True, "prediction", 0.2
  batch = random_batch(batch=1, h=64, w=64, classes=c.model.num_classes)
  _, mesh, states = init(c, batch)
  m = states["wtm"].params["main"]["kernel"]
  params = {k: s.params for k, s in states.items()}
  params["wtm"] = {**params["wtm"], "main": {"kernel": m + 0.5 * jax.random.normal(jax.random.key(3), m.shape)}}
  seen, real = {}, pixel_weights.target_weights
  monkeypatch.setattr(pixel_weights, "target_weights", lambda out_t, config, predicted=None: seen.update(
      out_t=out_t, got=real(out_t, config, predicted)) or seen["got"])

  def body(params, batch):
    jal_wtm.losses(params, states, batch, jax.random.key(0), c, "data")
    dect2 = jal_wtm.transferred_logits(params, seen["out_t"], "main", c, (64, 64))
    return seen["got"], seen["out_t"]["main"], dect2

  got, dec2, dect2 = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")))(
      params, batch)
  assert not np.allclose(dect2, dec2, atol=1e-3)  # DecT2 differs from Dec2 here, and so do their GenMaps
  assert not np.allclose(got["main"], pixel_weights.genmap(dec2, 0.2, c.loss.genmap_mu), atol=1e-6)
  for level in ("main", "aux"):
    np.testing.assert_allclose(got[level], pixel_weights.genmap(dect2, 0.2, c.loss.genmap_mu), atol=1e-6)
