"""JAL + WTM: the weight transfer module's algebra and gradient, the routing of every loss to its own states, the
eq. 9 switch, the Table 3 discriminator variants, and one clear error per bad option."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jal_wtm as config_module
from step_utils import init, random_batch
from uda_jax import methods, models, parallel, steps
from uda_jax.errors import UserError
from uda_jax.methods import jal_wtm


@pytest.fixture
def config(toy_config):
  """The JAL + WTM toy preset with conftest's shrunk network."""
  c = config_module.get_config("toy")
  c.model.width, c.disc.channels = toy_config.model.width, toy_config.disc.channels
  return c


def _loss_fn(config, states, batch, mesh):
  method = methods.get(config.method)

  def fn(params, which):
    def body(params, batch):
      out, aux = method.losses(params, states, batch, jax.random.key(0), config, "data")
      return jax.lax.pmean(out[which] if which in out else aux["metrics"][which], "data")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())(params, batch)
  return fn


def _grads(config, states, batch, mesh, which):
  loss = _loss_fn(config, states, batch, mesh)
  return jax.device_get(jax.jit(jax.grad(lambda p: loss(p, which)))({k: s.params for k, s in states.items()}))


def _zero(tree):
  return all(not np.any(np.asarray(x)) for x in jax.tree.leaves(tree))


def _forward(states, image):
  seg = states["seg"]
  return seg.apply_fn({"params": seg.params, "batch_stats": seg.batch_stats}, jnp.asarray(image), train=False)


@pytest.mark.parametrize("arch", ["deeplabv2_resnet", "deeplabv2_vgg16"])
def test_identity_wtm_gives_back_each_decoders_logits_exactly(config, arch):
  if arch == "deeplabv2_vgg16":
    config = config_module.get_config("vgg16")
    config.disc.channels = (8, 8, 8, 8)
  batch = random_batch(batch=1, h=48, w=48)
  _, _, states = init(config, batch)
  widths = {l: states["wtm"].params[l]["kernel"].shape for l in ("aux", "main")}
  assert widths == ({"aux": (512, 512), "main": (1024, 1024)} if arch == "deeplabv2_vgg16" else
                    {"aux": (128, 128), "main": (256, 256)})  # Dec_i's input channels: VGG conv5 / fc7
  out = _forward(states, batch["target_image"])
  params = {k: s.params for k, s in states.items()}
  for level in ("aux", "main"):
    transferred = jal_wtm.transferred_logits(params, out, level, config, out[level].shape[1:3])
    np.testing.assert_array_equal(np.asarray(transferred), np.asarray(out[level]))
  dect2 = methods.segmenters(config, states)["DecT2"]
  jax.tree.map(np.testing.assert_array_equal, dect2.params, states["seg"].params)


def test_transferred_decoders_gradient_wrt_wtm_by_hand():
  """L = sum(DecT(x) * R) on a tiny two-branch decoder: dL/dWT[i,j,c,k] = sum_yx xpad[y+i*d, x+j*d, c] R[y,x,k],
  dL/dM[c',c] = sum_branches sum_ijk W[i,j,c',k] dL/dWT[i,j,c,k] (eq. 6 by the chain rule)."""
  model = ml_collections.ConfigDict(dict(num_classes=2, aspp_dilations=(1, 2), aspp_branches=2, dtype="float32"))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
  r = rng.normal(size=(1, 4, 5, 2)).astype(np.float32)
  m = rng.normal(size=(3, 3)).astype(np.float32)
  head = models.build_head(model)
  params = head.init(jax.random.key(1), jnp.asarray(x))["params"]
  grad = jax.grad(lambda m: jnp.sum(head.apply({"params": jal_wtm.transfer(params, m)}, x) * r))(jnp.asarray(m))
  expected = np.zeros((3, 3))
  for b, d in enumerate((1, 2)):
    w = np.asarray(params[f"conv2d_list_{b}"]["conv"]["kernel"], np.float64)
    xpad = np.pad(x[0].astype(np.float64), ((d, d), (d, d), (0, 0)))
    g_wt = np.zeros_like(w)
    for i in range(3):
      for j in range(3):
        for y in range(4):
          for xx in range(5):
            g_wt[i, j] += np.outer(xpad[y + i * d, xx + j * d], r[0, y, xx])
    expected += np.einsum("ijck,ijdk->cd", w, g_wt)
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-5, atol=1e-5)


def test_every_loss_reaches_exactly_its_own_states(config):
  batch = random_batch(h=32, w=32)
  _, mesh, states = init(config, batch)
  assert sorted(states) == ["d_aux", "d_main", "d_wtm", "seg", "wtm"]
  g = lambda which: _grads(config, states, batch, mesh, which)
  heads = ("layer5", "layer6")
  seg = g("seg")  # eq. 1, 4, 5: segmentation, adversarial and JAL terms
  assert not _zero(seg["seg"]) and _zero(seg["wtm"])  # the segmentation loss never reaches the WTMs
  assert all(_zero(seg[d]) for d in ("d_aux", "d_main", "d_wtm"))
  wtm = g("wtm")  # eq. 9: the encoder and the WTMs, never a discriminator nor (by default) a decoder
  assert not _zero(wtm["wtm"]["aux"]) and not _zero(wtm["wtm"]["main"])
  assert not _zero(wtm["seg"]["backbone"]["layer3_0"]) and not _zero(wtm["seg"]["backbone"]["layer4_0"])
  assert all(_zero(wtm["seg"][h]) for h in heads)
  assert all(_zero(wtm[d]) for d in ("d_aux", "d_main", "d_wtm"))
  for d in ("d_aux", "d_main", "d_wtm"):  # eq. 2 / 8 on detached maps: each discriminator alone
    grads = g(d)
    assert not _zero(grads[d]) and all(_zero(v) for k, v in grads.items() if k != d), d


def test_jal_trains_the_encoder_and_dec2_not_dec1(config):
  batch = random_batch(h=32, w=32)
  _, mesh, states = init(config, batch)
  jal = _grads(config, states, batch, mesh, "adv_jal")  # eq. 5 alone, D1 frozen
  assert not _zero(jal["seg"]["layer6"]) and not _zero(jal["seg"]["backbone"]["layer4_0"])
  assert _zero(jal["seg"]["layer5"]) and _zero(jal["d_aux"]) and _zero(jal["wtm"])


def test_each_discriminator_sees_only_its_own_maps(config):
  """D1 is trained on Dec1's maps (never Dec2's, JAL or not), Dwtm on DecT1's only (not DecT2's, not Dec_i's):
  scaling the other decoders' weights leaves their losses unchanged to the bit."""
  batch = random_batch(h=32, w=32)
  _, mesh, states = init(config, batch)
  loss = jax.jit(_loss_fn(config, states, batch, mesh), static_argnums=1)
  params = {k: s.params for k, s in states.items()}

  def scaled(path, factor=3.0):
    out = jax.tree.map(lambda x: x, params)
    node = out
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = jax.tree.map(lambda x: x * factor, node[path[-1]])
    return out

  for which, unchanged, changed in (
      ("loss_d_aux", [("seg", "layer6"), ("wtm", "aux"), ("wtm", "main")], [("seg", "layer5")]),
      ("loss_d_main", [("seg", "layer5"), ("wtm", "main")], [("seg", "layer6")]),
      ("loss_d_wtm", [("wtm", "main"), ("seg", "layer6")], [("wtm", "aux"), ("seg", "layer5")])):
    base = float(loss(params, which.removeprefix("loss_")))
    for path in unchanged:
      assert float(loss(scaled(path), which.removeprefix("loss_"))) == base, (which, path)
    for path in changed:
      assert float(loss(scaled(path), which.removeprefix("loss_"))) != base, (which, path)


def test_switch_lets_eq9_train_the_original_decoders_weights_and_biases(config):
  config.loss.wtm_to_decoder = True
  batch = random_batch(h=32, w=32)
  _, mesh, states = init(config, batch)
  wtm = _grads(config, states, batch, mesh, "wtm")
  for head in ("layer5", "layer6"):
    branch = wtm["seg"][head]["conv2d_list_0"]["conv"]
    assert not _zero(branch["kernel"]) and not _zero(branch["bias"]), head
  assert all(_zero(wtm[d]) for d in ("d_aux", "d_main", "d_wtm"))


def test_train_step_moves_the_wtms_and_evaluates_the_transferred_decoder(config):
  config.optim.wtm_lr = 10.0  # the paper's 1e-4 moves an identity WTM by ~1e-12 in one step
  config.eval.original_decoder = True
  batch = random_batch(h=32, w=32)
  method, mesh, states = init(config, batch)
  new, metrics = steps.make_train_step(method, config, mesh)(states, parallel.global_batch(batch, mesh), jnp.int32(0))
  assert {"loss_wtm", "loss_d_wtm", "adv_jal", "adv_wtm_aux", "adv_wtm_main", "d_wtm_acc"} <= set(metrics)
  m = np.asarray(new["wtm"].params["main"]["kernel"])
  assert not np.array_equal(m, np.eye(len(m)))
  segs = methods.segmenters(config, new)
  assert list(segs) == ["DecT2", "Dec2"] and segs["Dec2"] is new["seg"]
  w = lambda s: np.asarray(s.params["layer6"]["conv2d_list_0"]["conv"]["kernel"])
  np.testing.assert_allclose(w(segs["DecT2"]), np.einsum("hwck,cd->hwdk", w(new["seg"]), m), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(segs["DecT2"].params["layer5"]["conv2d_list_0"]["conv"]["kernel"]),
                                np.asarray(new["seg"].params["layer5"]["conv2d_list_0"]["conv"]["kernel"]))
  config.loss.wtm_levels = ("aux",)  # no WTM on Dec2: Dec2 is what is evaluated
  assert list(methods.segmenters(config, new)) == [""]


def test_without_jal_and_wtm_it_is_multi_level_adaptsegnet(config):
  import adaptsegnet  # pylint: disable=g-import-not-at-top
  config.loss.jal, config.loss.wtm_levels = False, ()
  reference = adaptsegnet.get_config("toy")
  reference.model.width, reference.disc.channels = 8, (8, 8, 8, 8)
  batch = random_batch(h=32, w=32)
  out = []
  for c in (config, reference):
    method, mesh, states = init(c, batch)
    out.append(jax.device_get(steps.make_train_step(method, c, mesh)(states, parallel.global_batch(batch, mesh),
                                                                       jnp.int32(0))))
  (a, _), (b, _) = out
  assert sorted(a) == sorted(b) == ["d_aux", "d_main", "seg"]
  for name in a:  # the same states to the bit: parameters, optimizer states, BatchNorm statistics
    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name]), strict=True):
      np.testing.assert_array_equal(x, y)


def test_table3_discriminator_variants(config):
  import adaptsegnet as adaptsegnet_config  # pylint: disable=g-import-not-at-top
  from uda_jax.methods import adaptsegnet  # pylint: disable=g-import-not-at-top
  config = adaptsegnet_config.get_config("toy")  # generic options: AdaptSegNet takes them too
  config.disc.channels = (4, 4, 4, 4)
  config.disc.count, config.disc.width_mult, config.disc.front = 3, 2, "aspp"
  batch = random_batch(h=32, w=32)
  _, mesh, states = init(config, batch)
  assert sorted(k for k in states if k.startswith("d_")) == ["d_aux", "d_main", "d_main_1", "d_main_2"]
  conv = lambda name, layer: states[name].params[layer]["conv"]["kernel"]
  assert conv("d_main", "conv1").shape == (4, 4, 8, 8) and conv("d_main", "aspp_24").shape == (3, 3, 19, 8)
  assert not np.array_equal(conv("d_main", "conv1"), conv("d_main_1", "conv1"))  # independently initialised
  g = _grads(config, states, batch, mesh, "d_main_1")  # each trains on its own loss only
  assert not _zero(g["d_main_1"]) and all(_zero(v) for k, v in g.items() if k != "d_main_1")
  # The segmenter's adversarial term is the mean over the level's discriminators.
  params = {k: s.params for k, s in states.items()}
  p_t = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 19)), jnp.float32), -1)
  names = adaptsegnet.disc_names(config, "main")
  singles = [float(adaptsegnet.fool(states, params, [n], p_t, "vanilla")) for n in names]
  assert len(set(singles)) == 3
  assert float(adaptsegnet.fool(states, params, names, p_t, "vanilla")) == pytest.approx(np.mean(singles), rel=1e-6)


def test_bad_options_get_one_clear_error(config):
  batch = random_batch(h=32, w=32)
  for field, value, match in (("model.multi_level", False, "needs model.multi_level=True"),
                              ("loss.wtm_levels", ("dec3",), "levels are 'aux'"),
                              ("disc.count", 0, "disc.count=0"),
                              ("disc.width_mult", -1, "disc.width_mult=-1"),
                              ("disc.front", "pyramid", "disc.front 'pyramid' is not known"),
                              ("disc.input", "features", "adapts in the output space")):
    c = config.copy_and_resolve_references()
    section, key = field.split(".")
    with c.unlocked():
      c[section][key] = value
    with pytest.raises(UserError, match=match):
      init(c, batch)
  with pytest.raises(UserError, match="unknown preset"):
    config_module.get_config("full,wtm3")
  c = config.copy_and_resolve_references()
  c.method = "adaptsegnet"  # JAL / WTM options on another method are not silently ignored
  with pytest.raises(UserError, match="belong to method 'jal_wtm'"):
    init(c, batch)
