"""Pixel-wise weighted adversarial adaptation (Tian, Qu, Payeur): MRNet (methods/mrnet.py) whose output-space
adversarial terms are weighted per target pixel. No public code exists; this follows the paper.

G = C o F is MRNet's segmenter, D the five-conv output-space discriminator per level, D_aux three 1x1 convs
(LeakyReLU 0.2) and a 1x1 classifier on F's features (MRNet's main-decoder input). p*_t = max softmax of the
target prediction (loss.genmap_from: MRNet's ensemble 0.5 z_aux + z_main, the logits the run predicts with, or each
level's own map); GenMap is methods/pixel_weights.py, which the other output- and feature-level schemes take too
(loss.genmap_weights):
  GenMap    d = 0.01 where p*_t > T, exp(-p*_t) elsewhere, stop-gradient                   eq. 3, T = 0.9
  weights   w = (d + mu) [x sigmoid(D_aux(F(x_t))), stop-gradient: DisMap]               eq. 4 / eq. 6
  D_aux     0.5 BCE(D_aux(F_s), 0) + 0.5 BCE(D_aux(F_t), 1), detached features            eq. 5, min in eq. 9
  segmenter L_seg + L_memory + sum_i lambda^i mean(w BCE(D_i(P^i_t), 0))                  eq. 7 + eq. 8
            + lambda_feat BCE(D_aux(F_t), 0), D_i and D_aux frozen                         eq. 8, eq. 5 maximised
  D_i       0.5 BCE(D_i(P_s), 0) + 0.5 mean(w BCE(D_i(P^i_t), 1)), detached               eq. 9 (eq. 6 minimised)
Means over pixels stand for the paper's sums (AdaptSegNet's lambdas assume means). Every loss comes from one
forward before any update (eq. 7-9 as one step), each reaching only its own state.
Resolution (loss.weight_grid). The paper upsamples both encodings to the image before D and D_aux, and eq. 4 / 6
sum over image pixels, but D's map is 32x coarser. 'image' (default, faithful): weights live on image pixels and
D's output is upsampled (bilinear) to them; D_aux runs at image size too, affordably: upsampling is linear with
weights summing to 1, so it commutes with D_aux's first 1x1 conv, which therefore runs on the stride-8 features
and is upsampled after (64 channels at image size instead of 3072: 0.13 GB instead of 6.4 GB per 512x1024
image); the result equals the upsample-first network up to rounding. 'disc' (cheap): D_aux on the feature grid,
DisMap upsampled to the image, weights averaged over D's patches.
Every evaluation draws GenMap + mu, DisMap and their product for the first images (`visual_maps`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.errors import UserError
from uda_jax.losses import SOURCE, TARGET, gan_loss
from uda_jax.methods import adaptsegnet, common, mrnet, pixel_weights
from uda_jax.ops import resize_bilinear

D_FEAT = "d_feat"


def check(config):
  mrnet.check(config)
  cfg = config.loss
  if not cfg.genmap_weights:
    raise UserError("method 'pixel_weighted' always weights by GenMap (loss.genmap_weights=False): for MRNet "
                    "without weights use method 'mrnet' (configs/pixel_weighted.py:mrnet)")
  if cfg.dismap and not cfg.feature_disc:
    raise UserError("loss.dismap=True needs the feature-space discriminator D_aux: set loss.feature_disc=True")


def create_states(config, rng, shapes):
  check(config)
  states = adaptsegnet.create_states(config, rng, shapes)  # seg, d_main, d_aux as MRNet's
  if config.loss.feature_disc:
    feature_shape = common.feature_shape(states["seg"], shapes["target_image"])
    states[D_FEAT] = common.create_discriminator_state(config, jax.random.fold_in(rng, 3), feature_shape,
                                                       arch="feature")
  return states


def feature_disc(state, d_params, features, size, config):
  """D_aux's logits [N,H,W,1] at image `size` ('image') or on the feature grid ('disc')."""
  up = tuple(size) if config.loss.weight_grid == "image" else None
  return state.apply_fn({"params": d_params}, features, up)


def losses(params, states, batch, rng, config, axis_name=None):
  cfg = config.loss
  out_s, out_t, stats, l_seg, metrics = adaptsegnet.forward(params, states, batch, config, axis_name, rng)
  size = batch["target_image"].shape[1:3]
  metrics["memory"] = mrnet.memory_regularisation(out_t, states["seg"].step, config, axis_name)
  l_seg = l_seg + cfg.lambda_memory * metrics["memory"]
  per_state, dismap = {}, 1.0
  if cfg.feature_disc:  # eq. 5 on detached features (D_aux's loss); eq. 8: F fools the frozen D_aux
    d = states[D_FEAT]
    z_s = feature_disc(d, params[D_FEAT], jax.lax.stop_gradient(out_s["features"]), size, config)
    z_t = feature_disc(d, params[D_FEAT], jax.lax.stop_gradient(out_t["features"]), size, config)
    per_state[D_FEAT] = 0.5 * gan_loss(z_s, SOURCE, "vanilla") + 0.5 * gan_loss(z_t, TARGET, "vanilla")
    metrics[f"{D_FEAT}_acc"] = 0.5 * (jnp.mean(z_s < 0) + jnp.mean(z_t > 0))
    metrics["adv_feat"] = gan_loss(feature_disc(d, common.stop(params[D_FEAT]), out_t["features"], size, config),
                                   SOURCE, "vanilla")
    l_seg = l_seg + cfg.lambda_adv_feat * metrics["adv_feat"]
    if cfg.dismap:  # target membership, at image pixels
      dismap = resize_bilinear(jax.nn.sigmoid(jax.lax.stop_gradient(z_t)), size)[..., 0]
  weights = {level: w * dismap for level, w in pixel_weights.target_weights(out_t, config).items()}  # eq. 4 / 6
  adv, per_disc, adv_metrics = adaptsegnet.output_space(params, states, out_s, out_t, config, weights,
                                                        cfg.weight_disc)
  metrics.update(adv_metrics)
  return {"seg": l_seg + adv, **per_disc, **per_state}, {"batch_stats": stats, "metrics": metrics}


def weight_maps(seg_state, d_feat_state, image, config):
  """GenMap (d + mu), DisMap and their product [N,H,W] for images (evaluation mode): what the weighting sees."""
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  out = seg_state.apply_fn(variables, image, train=False)
  size = image.shape[1:3]
  z = resize_bilinear(pixel_weights.genmap_logits(out, "main", config), size)
  maps = {"genmap": pixel_weights.genmap(z, config.loss.genmap_threshold, config.loss.genmap_mu)}
  if d_feat_state is not None and config.loss.dismap:
    z_d = feature_disc(d_feat_state, d_feat_state.params, out["features"], size, config)
    maps["dismap"] = resize_bilinear(jax.nn.sigmoid(z_d), size)[..., 0]
    maps["weight"] = maps["genmap"] * maps["dismap"]
  return maps


def visual_maps(config, states, images):
  """GenMap + mu, DisMap and the weight for the first evaluation images, one at a time on this process's local
  copy of the states (process 0 draws its own samples; a global replicated array is not addressable alone)."""
  local = lambda s: None if s is None else jax.tree.map(
      lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, s)
  seg, d_feat = local(states["seg"]), local(states.get(D_FEAT))
  run = jax.jit(lambda seg, d_feat, x: weight_maps(seg, d_feat, x, config))
  per_image = [run(seg, d_feat, jnp.asarray(image)[None]) for image in images]
  vmax = {"genmap": 1.0 + config.loss.genmap_mu, "dismap": 1.0, "weight": 1.0 + config.loss.genmap_mu}
  return {k: (np.concatenate([np.asarray(m[k]) for m in per_image]), vmax[k]) for k in vmax if k in per_image[0]}
