"""LSD-seg: "Learning from Synthetic Data: Addressing Domain Shift for Semantic Segmentation" (Sankaranarayanan et
al., CVPR 2018), as swamiviv/LSD-seg's trainer_LSD.py runs it.

F = FCN-8s (its 'fc7', 'pool4', 'pool3' are the embedding), G = generator (image in [0, 1] from the embedding),
D = 4-way patch discriminator with an auxiliary K-way labelling head. x = the un-normalised image in [0, 1] (what
D sees as real), y = source labels nearest-downsampled to D's grid (255 ignored). CE(z, c) = cross-entropy summed
over D's grid, / batch; domain classes src-real 0, src-fake 1, tgt-real 2, tgt-fake 3 (Table 1):
  D   CE(D_s(x_s), 0) + CE(D_s(G_s), 1) + CE(D_s(x_t), 2) + CE(D_s(G_t), 3)   L^s_adv,D + L^t_adv,D (within-domain)
      + CE(D_c(x_s), y)                                                     L^s_aux
  G   CE(D_c(G_s), y) + 0.1 [CE(D_s(G_s), 0) + CE(D_s(G_t), 2)]              L^s_aux + L^s_adv,G + L^t_adv,G
      + 1 [L1(G_s, x_s) + L1(G_t, x_t)]                                     L_rec (mean over pixels)
  F   L_seg(F(x_s), labels) + 0.1 [CE(D_s(G_s), 2) + CE(D_s(G_t), 0)]       L_seg + L^s_adv,F + L^t_adv,F (cross-
      + 0.1 CE(D_c(G_s), y)                                                 domain: source fake as target real...)
with L_seg summed over pixels / batch (loss.ce_reduction='sum'); the 0.1s are loss.lambda_adv_f (official
adv_weight; the paper's beta), loss.lambda_aux_f (c_weight; the paper's alpha), loss.lambda_adv_g; the 1 is
loss.lambda_rec. Each loss reaches only its network: D's sees detached fakes, G's detached embeddings and a
frozen D, F's a frozen G and D (its gradient flows through them into the embedding).
One forward, three updates. The official code computes everything once, then steps D, G and F in turn, each
`backward(retain_graph=True)` on the same graph. Its later backward passes therefore multiply pre-update
activations with weights the earlier in-place steps already changed (PyTorch 0.2 let that pass; PyTorch >= 1.5
refuses it). Here all three losses and gradients come from the one pre-update forward and the three states step
together in one jitted step: the simultaneous-gradient reading of Figure 2. G and D appear in several losses
with stop-gradients in different places; their forwards are the same computation with the same dropout masks
(one per network and input, as the official one call each), which XLA computes once.
Variants (Table 4): loss.aux_head=False drops D's labelling head and every aux term; loss.patch_disc=False makes
the 4-way output one per image; loss.lsd_space='feature' replaces G and D by a 1x1-conv D on fc7 (source 0 /
target 1, summed BCE), which F fools with the flipped labels, weighted loss.lambda_adv_f.
Labels for D: nearest downsampling (the paper's, default). loss.aux_labels='official_transposed' reproduces the
official transform_label_forD, which resizes to (width, height) = (h, w) of D's grid and copies the (w, h) result
into the (h, w) map element by element: a scrambled map (PyTorch 0.2 allowed the same-size copy).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uda_jax import models, optim, state as state_lib
from uda_jax.data.normalization import to_unit
from uda_jax.errors import UserError
from uda_jax.losses import summed_cross_entropy
from uda_jax.methods import common
from uda_jax.models import lsd_networks

GEN, DISC = "gen", "disc"
SRC_REAL, SRC_FAKE, TGT_REAL, TGT_FAKE = 0, 1, 2, 3


def check(config, shapes=None):
  cfg = config.loss
  if config.model.arch != "fcn8s":
    raise UserError(f"method 'lsdseg' needs model.arch='fcn8s' (its G reads fc7, pool4, pool3), not "
                    f"{config.model.arch!r}")
  if cfg.lsd_space not in ("image", "feature"):
    raise UserError(f"loss.lsd_space={cfg.lsd_space!r}: choose 'image' or 'feature'")
  if cfg.aux_labels not in ("nearest", "official_transposed"):
    raise UserError(f"loss.aux_labels={cfg.aux_labels!r}: choose 'nearest' or 'official_transposed'")
  for role in ("source", "target"):
    if shapes and cfg.lsd_space == "image":
      h, w = shapes[f"{role}_image"][1:3]
      if lsd_networks.generator_output_size(h, w) != (h, w):
        raise UserError(f"LSD-seg's generator cannot reconstruct a {h}x{w} {role} image: FCN-8s's padding "
                        "arithmetic (conv1_1 pad 100, ceil-mode pools, the k8 s2 p100 last layer) gives it back "
                        "only for multiples of 32 such as 256x512, 320x640, 512x1024; set "
                        f"data.{role}_aug.crop (or data.{role}_size) to one")


def create_states(config, rng, shapes):
  check(config, shapes)
  k_seg, k_gen, k_disc = jax.random.split(rng, 3)
  seg = common.create_segmenter_state(config, k_seg, shapes["source_image"], shapes.get("axis_name"))
  d_adam = optim.discriminator_adam(config.optim)
  if config.loss.lsd_space == "feature":
    return {"seg": seg, DISC: common.create_discriminator_state(
        config, k_disc, common.feature_shape(seg, shapes["target_image"]), arch="feature")}
  variables = {"params": seg.params, "batch_stats": seg.batch_stats}
  out = jax.eval_shape(lambda x: seg.apply_fn(variables, x, train=False),
                       jax.ShapeDtypeStruct(shapes["target_image"], jnp.float32))
  gen = models.build_generator(config)
  zeros = lambda k: jnp.zeros(out[k].shape, jnp.float32)
  g_vars = gen.init(k_gen, zeros("fc7"), zeros("pool4"), zeros("pool3"))
  disc = models.build_patch_discriminator(config)
  d_vars = disc.init(k_disc, jnp.zeros(shapes["target_image"], jnp.float32))
  return {"seg": seg, GEN: state_lib.create(gen, d_adam, g_vars), DISC: state_lib.create(disc, d_adam, d_vars)}


def labels_for_d(labels, grid, how: str = "nearest"):
  """Source train ids [N, H, W] on D's grid (h, w): PIL NEAREST (pixel centres), or the official scramble."""
  (n, h_in, w_in), (h, w) = labels.shape, grid
  pick = lambda n_in, n_out: np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
  if how == "nearest":
    return labels[:, pick(h_in, h)][:, :, pick(w_in, w)]
  small = labels[:, pick(h_in, w)][:, :, pick(w_in, h)]  # PIL size (width=h, height=w): a w x h array
  return small.reshape(n, h, w)


def domain_ce(logits, domain: int):
  return summed_cross_entropy(logits, jnp.full(logits.shape[:3], domain, jnp.int32))


def losses(params, states, batch, rng, config, axis_name=None):
  cfg, norm = config.loss, config.data.normalization
  seg, stop = states["seg"], common.stop
  rngs = {k: jax.random.fold_in(rng, i) for i, k in enumerate(("f_s", "f_t", "g_s", "g_t", "xs", "gs", "xt", "gt"))}
  out_s, stats = common.segment(seg, params["seg"], seg.batch_stats, batch["source_image"], rng=rngs["f_s"])
  out_t, stats = common.segment(seg, params["seg"], stats, batch["target_image"], rng=rngs["f_t"])
  l_seg = summed_cross_entropy(out_s["main"], batch["source_label"])
  metrics = {"seg_main": l_seg}
  if cfg.lsd_space == "feature":
    return _feature_space(params, states, out_s, out_t, l_seg, metrics, stats, cfg)

  x_s, x_t = to_unit(batch["source_image"], norm), to_unit(batch["target_image"], norm)
  gen, disc = states[GEN], states[DISC]
  G = lambda p, out, r: gen.apply_fn({"params": p}, out["fc7"], out["pool4"], out["pool3"], train=True,
                                     rngs={"dropout": r})
  D = lambda p, x, r: disc.apply_fn({"params": p}, x, train=True, rngs={"dropout": r})
  embed = lambda out: {k: out[k] for k in ("fc7", "pool4", "pool3")}
  fake_for_g = {d: G(params[GEN], stop(embed(o)), rngs[f"g_{d}"]) for d, o in (("s", out_s), ("t", out_t))}
  fake_for_f = {d: G(stop(params[GEN]), embed(o), rngs[f"g_{d}"]) for d, o in (("s", out_s), ("t", out_t))}
  d_real_s, d_real_t = D(params[DISC], x_s, rngs["xs"]), D(params[DISC], x_t, rngs["xt"])
  d_fake = {d: D(params[DISC], stop(fake_for_g[d]), rngs[f"g{d}"]) for d in "st"}  # D's own loss
  g_fake = {d: D(stop(params[DISC]), fake_for_g[d], rngs[f"g{d}"]) for d in "st"}  # G's, through a frozen D
  f_fake = {d: D(stop(params[DISC]), fake_for_f[d], rngs[f"g{d}"]) for d in "st"}  # F's, through frozen G, D

  l_d = (domain_ce(d_real_s["domain"], SRC_REAL) + domain_ce(d_fake["s"]["domain"], SRC_FAKE)
         + domain_ce(d_real_t["domain"], TGT_REAL) + domain_ce(d_fake["t"]["domain"], TGT_FAKE))
  g_adv = domain_ce(g_fake["s"]["domain"], SRC_REAL) + domain_ce(g_fake["t"]["domain"], TGT_REAL)
  devices = 1 if axis_name is None else jax.lax.psum(1, axis_name)  # L1 means over the global batch / its size
  rec = sum(jnp.mean(jnp.abs(fake_for_g[d] - x)) for d, x in (("s", x_s), ("t", x_t))) / (x_s.shape[0] * devices)
  f_adv = domain_ce(f_fake["s"]["domain"], TGT_REAL) + domain_ce(f_fake["t"]["domain"], SRC_REAL)
  l_g = cfg.lambda_adv_g * g_adv + cfg.lambda_rec * rec
  l_f = l_seg + cfg.lambda_adv_f * f_adv
  metrics.update(d_domain=l_d, g_adv=g_adv, rec=rec, f_adv=f_adv,
                 d_acc=jnp.mean(jnp.concatenate([
                     (jnp.argmax(z["domain"], -1) == c).ravel() for z, c in
                     ((d_real_s, SRC_REAL), (d_fake["s"], SRC_FAKE), (d_real_t, TGT_REAL), (d_fake["t"], TGT_FAKE))])))
  if cfg.aux_head:
    y_d = labels_for_d(batch["source_label"], d_real_s["aux"].shape[1:3], cfg.aux_labels)  # 255 stays 255
    aux = {k: summed_cross_entropy(z["aux"], y_d) for k, z in (("d", d_real_s), ("g", g_fake["s"]),
                                                                ("f", f_fake["s"]))}
    l_d, l_g, l_f = l_d + aux["d"], l_g + aux["g"], l_f + cfg.lambda_aux_f * aux["f"]
    metrics.update(d_aux=aux["d"], g_aux=aux["g"], f_aux=aux["f"])
  return {"seg": l_f, GEN: l_g, DISC: l_d}, {"batch_stats": stats, "metrics": metrics}


def _feature_space(params, states, out_s, out_t, l_seg, metrics, stats, cfg):
  """Table 4 "Feature space based D": D on fc7 (source 0, target 1); F fools it with the flipped labels."""
  disc, stop = states[DISC], common.stop
  D = lambda p, f: disc.apply_fn({"params": p}, f)
  bce = lambda z, label: jnp.sum(optax.sigmoid_binary_cross_entropy(z, jnp.full_like(z, label))) / z.shape[0]
  l_d = bce(D(params[DISC], stop(out_s["fc7"])), 0.0) + bce(D(params[DISC], stop(out_t["fc7"])), 1.0)
  f_adv = bce(D(stop(params[DISC]), out_s["fc7"]), 1.0) + bce(D(stop(params[DISC]), out_t["fc7"]), 0.0)
  metrics.update(d_domain=l_d, f_adv=f_adv)
  return {"seg": l_seg + cfg.lambda_adv_f * f_adv, DISC: l_d}, {"batch_stats": stats, "metrics": metrics}


def reconstructions(config, states, source_image, target_image):
  """uint8 RGB [2, H, 2W, 3]: (source | G(F(source))) over (target | G(F(target))), evaluation mode (no
  dropout), for TensorBoard and the predictions folder: a GAN is checked by looking at it."""
  if GEN not in states:
    return None
  local = lambda s: jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, s)
  seg, gen, norm = local(states["seg"]), local(states[GEN]), config.data.normalization

  def run(seg, gen, x):
    out = seg.apply_fn({"params": seg.params, "batch_stats": seg.batch_stats}, x, train=False)
    fake = gen.apply_fn({"params": gen.params}, out["fc7"], out["pool4"], out["pool3"], train=False)
    return jnp.concatenate([to_unit(x, norm), fake], axis=2)

  rows = jnp.concatenate([jax.jit(run)(seg, gen, jnp.asarray(x[:1])) for x in (source_image, target_image)])
  rgb = rows[..., ::-1] if norm in ("caffe_bgr", "vgg_bgr") else rows
  return np.asarray(jnp.clip(jnp.round(rgb * 255.0), 0, 255)).astype(np.uint8)
