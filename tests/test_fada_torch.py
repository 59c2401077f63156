"""FADA's adversarial step against a PyTorch transcription of one iteration of the official train_adv.py.

The reference (torch.nn.functional on the same weights, float64) follows JDAI-CV/FADA train_adv.py:

  src_fea = F(src); src_pred = C(src_fea, src_size) / T; loss_seg = CE(src_pred, src_label, ignore 255)
  src_soft = softmax(src_pred).detach(); src_soft[src_soft > 0.9] = 0.9      (likewise tgt_soft)
  loss_adv = lambda * SCE(D(tgt_fea, tgt_size), cat(tgt_soft, 0))            -> F (and C, which it misses)
  loss_D = 0.5 SCE(D(src_fea.detach()), cat(src_soft, 0)) + 0.5 SCE(D(tgt_fea.detach()), cat(0, tgt_soft))

with F the torchvision-layout ResNet (FrozenBatchNorm2d without eps, output stride 8), C ASPP_Classifier_V2
(four dilated 3x3 convs summed, upsampled align_corners=True) and D PixelDiscriminator. Our side is
`methods.fada.losses` in float32 under shard_map on a one-device mesh; losses and the gradient of every
parameter are compared. The hard (Table 5) and binary (Table 4/5 baseline) encodings are checked at the
loss level against small transcriptions of those variants.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # pylint: disable=g-import-not-at-top

import adaptsegnet  # pylint: disable=g-import-not-at-top
import torch_reference as tr  # pylint: disable=g-import-not-at-top
from uda_jax import methods, parallel  # pylint: disable=g-import-not-at-top

K = 5  # classes
SRC, TGT = (2, 32, 48), (2, 41, 57)  # different source / target sizes (GTA5 vs Cityscapes), odd target
BLOCKS = (1, 1, 1, 1)
LOSS_TOL = 5e-6  # relative, float32 (ours) vs float64 (reference)
GRAD_TOL = 2e-5  # max |ours - ref| / max |ref| per parameter
# Kernel scales: features of moderate size, a classifier confident enough that the 0.9 clip acts at part of the
# pixels, a discriminator neither saturated nor at chance.
GAINS = {"backbone": 1.0, "layer6": 6.0, "D_0": 1.5, "D_2": 1.5, "cls1": 1.5, "cls2": 1.5}


def _config(encoding="soft", lam=1e-3, temperature=1.8, confidence=0.9):
  c = adaptsegnet.get_config("toy")
  c.method = "fada"
  c.init_from = c.init_from_required = ""
  m = c.model
  m.multi_level, m.layout, m.bn_mode, m.bn_eps, m.aspp_branches = False, "torchvision", "frozen", 0.0, 4
  m.width, m.blocks, m.num_classes = 8, BLOCKS, K
  c.disc.arch, c.disc.width = "pixel", 16
  l = c.loss
  l.encoding, l.temperature, l.confidence, l.seg_on_scaled_logits = encoding, temperature, confidence, True
  l.lambda_seg_main, l.lambda_adv_main = 1.0, lam
  return c


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, K, SRC).astype(np.int32)
  labels[:, :5] = 255
  labels[rng.random(SRC) < 0.1] = 255
  return {"source_image": rng.normal(size=(*SRC, 3)).astype(np.float32), "source_label": labels,
          "target_image": rng.normal(size=(*TGT, 3)).astype(np.float32)}


# ---- our trees <-> torch state_dict names ----

def _flat(tree):
  return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat):
  out = {}
  for path, v in flat.items():
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return out


def torch_name(path):
  """('backbone', 'layer1_0', 'downsample_0', 'conv', 'kernel') -> 'layer1.0.downsample.0.weight';
  'layer6/conv2d_list_i' -> 'classifier.conv2d_list.i' (FADA's ASPP_Classifier_V2); 'D_0' -> 'D.0'."""
  mods, leaf = list(path[:-1]), path[-1]
  if mods[-1] == "conv":
    mods, leaf = mods[:-1], {"kernel": "weight", "bias": "bias"}[leaf]
  else:  # BatchNorm
    leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
  if mods[0] == "backbone":
    mods = mods[1:]
  elif mods[0] == "layer6":
    mods = ["classifier", *mods[1:]]
  return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in mods] + [leaf])


def to_torch(a, path):
  a = np.asarray(a, np.float64)
  return np.ascontiguousarray(a.transpose(3, 2, 0, 1)) if path[-1] == "kernel" else a


def _randomize(shapes, rng, gains):
  """Random values: conv kernels N(0, gain^2 / fan_in) with the gain of their top module (`gains`), BN scales
  U(0.5, 1.5), biases and running means N(0, 0.2^2), running variances log-uniform in [1e-3, 2]."""
  out = {}
  for path, s in _flat(shapes).items():
    leaf = path[-1]
    if leaf == "kernel":
      fan_in = np.prod(s.shape[:3])
      v = rng.normal(size=s.shape) * gains.get(path[0], 1.0) / np.sqrt(fan_in)
    elif leaf == "scale":
      v = rng.uniform(0.5, 1.5, s.shape)
    elif leaf == "var":
      v = 10.0 ** rng.uniform(-3.0, 0.3, s.shape)
    else:  # biases, means
      v = rng.normal(size=s.shape) * 0.2
    out[path] = np.asarray(v, np.float32)
  return out


def make_states(config, seed=0):
  """Our states (from eval_shape, no init compile) with random params / running statistics. Each FrozenBN's
  weight is its random scale times sqrt(running_var), so activations stay O(1) while the small variances
  make eps matter (eps 1e-5 instead of FADA's none would shift those channels by up to 0.5%)."""
  batch = _batch()
  shapes = {k: (1, *v.shape[1:]) for k, v in batch.items()}
  shapes["axis_name"] = parallel.AXIS
  method = methods.get(config.method)
  abstract = jax.eval_shape(lambda: method.create_states(config, jax.random.key(0), shapes))
  rng = np.random.default_rng(seed)
  states = {}
  for name, st in abstract.items():
    params = _randomize(st.params, rng, GAINS)
    stats = _randomize(st.batch_stats, rng, GAINS)
    for path, var in stats.items():
      if path[-1] == "var":
        params[(*path[:-1], "scale")] = params[(*path[:-1], "scale")] * np.sqrt(var)
    states[name] = st.replace(params=_unflat(params), batch_stats=_unflat(stats), opt_state=None)
  return method, states


def state_dict(states):
  seg = {**_flat(states["seg"].params), **_flat(states["seg"].batch_stats)}
  return ({torch_name(p): torch.from_numpy(to_torch(v, p)) for p, v in seg.items()},
          {torch_name(p): torch.from_numpy(to_torch(v, p)) for p, v in _flat(states["d_main"].params).items()})


# ---- our side ----

def ours(method, config, states, batch, grads=True):
  """Per-state losses and metrics; with grads, the gradient of seg + d_main (what the train step applies) and
  of the adversarial term alone (un-weighted), for every parameter."""
  mesh = parallel.make_mesh(jax.devices()[:1])

  def values(params, batch):
    def body(params, batch):
      out, aux = method.losses(params, states, batch, jax.random.key(0), config, parallel.AXIS)
      m = aux["metrics"]
      v = jnp.stack([out["seg"], out["d_main"], m["adv_main"], m["seg_main"]])
      return jax.lax.pmean(v, parallel.AXIS)
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=P())(params, batch)

  params = {k: s.params for k, s in states.items()}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  if not grads:
    return np.asarray(jax.jit(values)(params, batch), np.float64), None, None

  @jax.jit
  def run(params, batch):
    v, vjp = jax.vjp(lambda p: values(p, batch), params)
    return v, vjp(jnp.array([1.0, 1.0, 0.0, 0.0]))[0], vjp(jnp.array([0.0, 0.0, 1.0, 0.0]))[0]

  v, g_total, g_adv = run(params, batch)
  return np.asarray(v, np.float64), g_total, g_adv


# ---- the official iteration in torch ----

def feature_extractor(sd, x):
  return tr.resnet(sd, x, "torchvision", BLOCKS, tr.bn_frozen_no_eps(sd))[1]


def classifier(sd, fea, size):
  return TF.interpolate(tr.aspp(sd, "classifier", fea, 4), size=size, mode="bilinear", align_corners=True)


def discriminator(sd, x, size):
  h = TF.leaky_relu(TF.conv2d(x, sd["D.0.weight"], sd["D.0.bias"], 1, 1), 0.2)
  h = TF.leaky_relu(TF.conv2d(h, sd["D.2.weight"], sd["D.2.bias"], 1, 1), 0.2)
  out = torch.cat([TF.conv2d(h, sd[f"{c}.weight"], sd[f"{c}.bias"], 1, 1) for c in ("cls1", "cls2")], 1)
  return TF.interpolate(out, size=size, mode="bilinear", align_corners=True)


def soft_label_cross_entropy(pred, soft_label, mask=None):
  """train_adv.py's; `mask` (hard encoding) restricts the mean to the kept pixels."""
  nll = torch.sum(-soft_label * TF.log_softmax(pred, dim=1), dim=1)
  return torch.mean(nll) if mask is None else nll[mask].sum() / mask.sum()


def encodings(pred, encoding, confidence):
  """(a, mask) from tempered logits, detached: soft as train_adv.py; hard = one-hot argmax where the max
  probability reaches `confidence`; binary = 1 (one channel per domain)."""
  p = TF.softmax(pred, dim=1).detach()
  if encoding == "soft":
    p = p.clone()
    p[p > confidence] = confidence
    return p, None
  if encoding == "hard":
    conf, idx = p.max(1)
    return TF.one_hot(idx, p.shape[1]).permute(0, 3, 1, 2).to(p.dtype), conf >= confidence
  return torch.ones_like(p[:, :1]), None


def official_iteration(sd_seg, sd_d, batch, config):
  """One train_adv.py iteration up to the optimizer steps: losses, and the gradients F/C get (seg + adv) and
  D gets (its own two halves; D's grads from loss_adv are zeroed before them), plus d(adv)/d(F, C)."""
  T, conf, lam, enc = (config.loss.temperature, config.loss.confidence, config.loss.lambda_adv_main,
                       config.loss.encoding)
  nchw = lambda x: torch.from_numpy(np.asarray(x, np.float64)).permute(0, 3, 1, 2)
  src, tgt = nchw(batch["source_image"]), nchw(batch["target_image"])
  label = torch.from_numpy(batch["source_label"]).long()
  src_size, tgt_size = src.shape[-2:], tgt.shape[-2:]
  seg_params = {k: v.clone().requires_grad_(not k.endswith(("running_mean", "running_var")))
                for k, v in sd_seg.items()}  # FrozenBN affine: buffers officially; gradients compared anyway
  d_params = {k: v.clone().requires_grad_() for k, v in sd_d.items()}

  src_fea = feature_extractor(seg_params, src)
  src_pred = classifier(seg_params, src_fea, src_size) / T
  loss_seg = TF.cross_entropy(src_pred, label, ignore_index=255)
  src_a, src_m = encodings(src_pred, enc, conf)

  tgt_fea = feature_extractor(seg_params, tgt)
  tgt_pred = classifier(seg_params, tgt_fea, tgt_size) / T
  tgt_a, tgt_m = encodings(tgt_pred, enc, conf)

  zeros = torch.zeros_like
  adv = soft_label_cross_entropy(discriminator(d_params, tgt_fea, tgt_size), torch.cat((tgt_a, zeros(tgt_a)), 1),
                                 tgt_m)
  loss_adv = lam * adv
  loss_d = (0.5 * soft_label_cross_entropy(discriminator(d_params, src_fea.detach(), src_size),
                                           torch.cat((src_a, zeros(src_a)), 1), src_m)
            + 0.5 * soft_label_cross_entropy(discriminator(d_params, tgt_fea.detach(), tgt_size),
                                             torch.cat((zeros(tgt_a), tgt_a), 1), tgt_m))
  names = [k for k, v in seg_params.items() if v.requires_grad]
  grad = lambda loss, ps, keys: {k: (g if g is not None else torch.zeros_like(ps[k])).numpy() for k, g in zip(
      keys, torch.autograd.grad(loss, [ps[k] for k in keys], retain_graph=True, allow_unused=True))}
  g_seg = grad(loss_seg + loss_adv, seg_params, names)
  g_adv = grad(adv, seg_params, names)
  g_d = grad(loss_d, d_params, list(d_params))
  probs = {"source": TF.softmax(src_pred, 1).detach(), "target": TF.softmax(tgt_pred, 1).detach()}
  values = np.array([float(x.detach()) for x in (loss_seg + loss_adv, loss_d, adv, loss_seg)])
  return values, g_seg, g_adv, g_d, probs


# ---- tests ----

def grad_errors(ours_tree, ref):
  """max |ours - ref| / max |ref| per parameter, by torch name; every reference gradient must be non-zero."""
  errs = {}
  for path, g in _flat(ours_tree).items():
    r = ref[torch_name(path)]
    scale = np.abs(r).max()
    assert scale > 0, path
    errs[torch_name(path)] = np.abs(to_torch(g, path) - r).max() / scale
  assert len(errs) == len(ref)  # every parameter of the reference compared
  return errs


def _check_grads(ours_tree, ref, what):
  errs = grad_errors(ours_tree, ref)
  bad = {k: f"{e:.1e}" for k, e in errs.items() if not e < GRAD_TOL}
  assert not bad, f"{what}: relative gradient errors over {GRAD_TOL}: {bad}"
  return max(errs.values())


@pytest.fixture(scope="module")
def soft_run():
  torch.set_num_threads(2)
  config = _config("soft", lam=1e-3)
  method, states = make_states(config)
  batch = _batch()
  sd_seg, sd_d = state_dict(states)
  return dict(config=config, batch=batch, sd=(sd_seg, sd_d), ours=ours(method, config, states, batch),
              ref=official_iteration(sd_seg, sd_d, batch, config))


def test_soft_encoding_matches_official_iteration(soft_run):
  config, (v, g_total, g_adv) = soft_run["config"], soft_run["ours"]
  ref_v, ref_seg, ref_adv, ref_d, probs = soft_run["ref"]
  # The random model is confident enough that the 0.9 clip acts, on both domains, but not everywhere.
  for domain, p in probs.items():
    clipped = float((p.max(1).values > config.loss.confidence).double().mean())
    print(f"{domain}: clipped at {clipped:.1%} of pixels")
    assert 0.1 < clipped < 0.9, domain
  # [seg + 1e-3 adv, loss_D, adv, loss_seg]
  print("ours", v, "\nref ", ref_v)
  np.testing.assert_allclose(v, ref_v, rtol=LOSS_TOL)
  worst = {
      "segmenter (seg + 1e-3 adv)": _check_grads(g_total["seg"], ref_seg, "seg"),
      "feature extractor (adv alone)": _check_grads(
          {"backbone": g_adv["seg"]["backbone"]}, {k: r for k, r in ref_adv.items() if not k.startswith("classifier")},
          "adv"),
      "discriminator (loss_D)": _check_grads(g_total["d_main"], ref_d, "D"),
  }
  print({k: f"{w:.1e}" for k, w in worst.items()})
  # The adversarial term reaches F only (detached encodings), never C or D; D's loss never the segmenter.
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g_adv["seg"]["layer6"]))
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g_adv["d_main"]))
  assert all(not np.any(r) for k, r in ref_adv.items() if k.startswith("classifier"))


@pytest.mark.parametrize("field,value", [("temperature", 1.0), ("confidence", 1.0)])
def test_comparison_notices_a_dropped_temperature_or_clip(soft_run, field, value):
  """The reference without T (or without the clip) is far outside the tolerances: losses and D's gradients
  (D's loss is where both enter on their own, through the encodings)."""
  v, g_total, _ = soft_run["ours"]
  other = _config("soft", lam=1e-3)
  setattr(other.loss, field, value)
  ref_v, _, _, ref_d, _ = official_iteration(*soft_run["sd"], soft_run["batch"], other)
  loss_err = np.abs(v[1] - ref_v[1]) / np.abs(ref_v[1])  # loss_D
  d_err = max(grad_errors(g_total["d_main"], ref_d).values())
  print(f"without {field}: loss_D rel err {loss_err:.1e}, D grads rel err {d_err:.1e}")
  assert loss_err > 20 * LOSS_TOL and d_err > 20 * GRAD_TOL


@pytest.mark.parametrize("encoding", ["hard", "binary"])
def test_other_encodings_match_transcription_at_loss_level(encoding):
  config = _config(encoding, lam=1.0)
  method, states = make_states(config, seed=0)
  batch = _batch()
  sd_seg, sd_d = state_dict(states)
  assert sd_d["cls1.weight"].shape[0] == (1 if encoding == "binary" else K)
  v, _, _ = ours(method, config, states, batch, grads=False)
  ref_v, _, _, _, probs = official_iteration(sd_seg, sd_d, batch, config)
  if encoding == "hard":
    for domain, p in probs.items():
      conf = p.max(1).values
      kept = float((conf >= config.loss.confidence).double().mean())
      print(f"{domain}: {kept:.1%} of pixels kept")
      assert 0.05 < kept < 0.95, domain
      assert float((conf - config.loss.confidence).abs().min()) > 1e-6  # no pixel on the fence in float32
  print("ours", v, "\nref ", ref_v)
  np.testing.assert_allclose(v, ref_v, rtol=LOSS_TOL)
