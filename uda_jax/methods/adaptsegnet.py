"""AdaptSegNet (Tsai et al., CVPR 2018): adversarial learning in the output space, single- or multi-level.

Per level i (main = conv5 / 'layer6', aux = conv4 / 'layer5'), with P = softmax of the upsampled logits:
  segmenter      sum_i lambda_seg^i L_seg(I_s) + lambda_adv^i L_adv(I_t)        Eq. (5), L_seg Eq. (3)
                 L_adv = loss(D_i(P_t), source label)                           Eq. (4); LS-GAN Eq. (8)
  discriminator  0.5 loss(D_i(P_s), source) + 0.5 loss(D_i(P_t), target)        Eq. (2); LS-GAN Eq. (7)
Official-code conventions: source label 0, target label 1; the discriminator sees detached predictions;
the adversarial loss does not update the discriminator. "Ours (feature)": D_i sees backbone features instead.
disc.count > 1 puts that many discriminators on the main level (JAL + WTM Table 3), L_adv averaged over them.
Each entry of the returned dict is the loss of the state of that name and nothing else: the
stop_gradients below make the gradient of the summed losses route each term to exactly one state.
The pieces (`forward`, `fool`, `discriminator_loss`, `output_space`) are what JAL + WTM builds on.
loss.genmap_weights=True weights every target term per pixel by GenMap (methods/pixel_weights.py).
"""

import jax
import jax.numpy as jnp

from uda_jax import models
from uda_jax.errors import UserError
from uda_jax.losses import SOURCE, TARGET, gan_loss
from uda_jax.methods import common, pixel_weights


def disc_names(config, level) -> list[str]:
  """The discriminators of a level: d_main, d_main_1, ... (disc.count on the main level), d_aux."""
  count = config.disc.count if level == "main" else 1
  return [f"d_{level}"] + [f"d_{level}_{j}" for j in range(1, count)]


def create_states(config, rng, shapes):
  if config.loss.jal or config.loss.wtm_levels:
    raise UserError(f"loss.jal={config.loss.jal} / loss.wtm_levels={tuple(config.loss.wtm_levels)!r} belong to "
                    "method 'jal_wtm' (configs/jal_wtm.py), not 'adaptsegnet'")
  k_seg, *k_d = jax.random.split(rng, 3)
  seg = common.create_segmenter_state(config, k_seg, shapes["source_image"], shapes.get("axis_name"))
  return {"seg": seg, **create_discriminators(config, k_d, _disc_input_shape(config, seg, shapes))}


def create_discriminators(config, keys, input_shape):
  """Every level's discriminators: the first of level i from keys[i], the extra ones (disc.count) from keys[i]
  folded with their index, so adding one changes no other's initialisation."""
  states = {}
  for level, key in zip(common.levels(config), keys):
    for j, n in enumerate(disc_names(config, level)):
      states[n] = common.create_discriminator_state(config, jax.random.fold_in(key, j) if j else key, input_shape)
  return states


def _disc_input_shape(config, seg, shapes):
  """What D sees on a target batch: the class map at image size, or the features at their own size and width."""
  if config.disc.input == "features":
    return common.feature_shape(seg, shapes["target_image"])
  n, h, w, _ = shapes["target_image"]
  return (n, h, w, config.model.num_classes)


def disc_input(config, outputs, level, real: bool = False):
  """What D_level sees: softmax of the level's logits; with real=True (the source side of D's loss) and
  loss.disc_real='ensemble', the softmax of the ensemble 0.5 z_aux + z_main for every level, as MRNet runs."""
  if config.disc.input == "features":
    return outputs["features"]
  if real and config.loss.get("disc_real", "level") == "ensemble":
    return jax.nn.softmax(ensemble_logits(outputs), axis=-1)
  return jax.nn.softmax(outputs[level], axis=-1)


def ensemble_logits(outputs):
  """MRNet's prediction (evaluation, memory-regularisation target, D's real input): z_main + 0.5 z_aux."""
  return models.prediction_logits(outputs, 0.5)


def forward(params, states, batch, config, axis_name, rng=None):
  """Source then target forward, threading BatchNorm statistics as the official code's two forwards do; the
  source segmentation loss of Eq. (3)/(5). Returns (out_s, out_t, batch_stats, l_seg, metrics). `rng` drives
  the segmenter's dropout (one draw per domain)."""
  seg, cfg = states["seg"], config.loss
  lambda_seg = {"main": cfg.lambda_seg_main, "aux": cfg.lambda_seg_aux}
  rng_s, rng_t = (None, None) if rng is None else jax.random.split(rng)
  out_s, stats = common.segment(seg, params["seg"], seg.batch_stats, batch["source_image"], rng=rng_s)
  l_seg, per_level = common.segmentation_loss(
      out_s, batch["source_label"], {l: lambda_seg[l] for l in common.levels(config)}, axis_name)
  out_t, stats = common.segment(seg, params["seg"], stats, batch["target_image"], rng=rng_t)
  return out_s, out_t, stats, l_seg, {f"seg_{l}": v for l, v in per_level.items()}


def fool(states, params, names, x, gan, weight=None, weight_grid="image"):
  """Eq. (4): loss(D(x), source label) averaged over the discriminators `names`, each frozen (as
  requires_grad=False officially): gradients reach x only. `weight`: per-pixel weights of x (losses.gan_loss)."""
  return sum(gan_loss(states[n].apply_fn({"params": common.stop(params[n])}, x), SOURCE, gan, weight, weight_grid)
             for n in names) / len(names)


def discriminator_loss(state, d_params, x_s, x_t, gan, weight_t=None, weight_grid="image"):
  """Eq. (2) on detached inputs, reaching this discriminator only: (loss, accuracy). `weight_t` weights the
  target term per pixel."""
  d_s = state.apply_fn({"params": d_params}, jax.lax.stop_gradient(x_s))
  d_t = state.apply_fn({"params": d_params}, jax.lax.stop_gradient(x_t))
  thr = 0.0 if gan == "vanilla" else 0.5  # logits vs least-squares scores
  acc = 0.5 * (jnp.mean(d_s < thr) + jnp.mean(d_t > thr))
  return 0.5 * gan_loss(d_s, SOURCE, gan) + 0.5 * gan_loss(d_t, TARGET, gan, weight_t, weight_grid), acc


def output_space(params, states, out_s, out_t, config, weight_t=None, weight_disc=True):
  """Every level's adversarial term (summed with its lambda: the segmenter's) and discriminator losses.
  weight_t [N,H,W] (or {level: [N,H,W]}): per-pixel weights of the target terms (pixel-wise weighted
  adaptation), in the segmenter's term and, with weight_disc, in the discriminators' too."""
  cfg = config.loss
  lambda_adv = {"main": cfg.lambda_adv_main, "aux": cfg.lambda_adv_aux}
  grid = cfg.get("weight_grid", "image")
  adv_total, per_disc, metrics = 0.0, {}, {}
  for level in common.levels(config):
    names = disc_names(config, level)
    p_s, p_t = disc_input(config, out_s, level, real=True), disc_input(config, out_t, level)
    w = weight_t.get(level) if isinstance(weight_t, dict) else weight_t
    adv = fool(states, params, names, p_t, cfg.gan, w, grid)
    adv_total += lambda_adv[level] * adv
    metrics[f"adv_{level}"] = adv
    if w is not None and level == "main":
      metrics["weight_mean"] = jnp.mean(w)
    for n in names:
      per_disc[n], metrics[f"{n}_acc"] = discriminator_loss(states[n], params[n], p_s, p_t, cfg.gan,
                                                            w if weight_disc else None, grid)
  return adv_total, per_disc, metrics


def losses(params, states, batch, rng, config, axis_name=None):
  out_s, out_t, stats, l_seg, metrics = forward(params, states, batch, config, axis_name, rng)
  adv, per_disc, adv_metrics = output_space(params, states, out_s, out_t, config,
                                            pixel_weights.target_weights(out_t, config), config.loss.weight_disc)
  return {"seg": l_seg + adv, **per_disc}, {"batch_stats": stats, "metrics": {**metrics, **adv_metrics}}
