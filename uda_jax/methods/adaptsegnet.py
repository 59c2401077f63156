"""AdaptSegNet (Tsai et al., CVPR 2018): adversarial learning in the output space, single- or multi-level.

Per level i (main = conv5 / 'layer6', aux = conv4 / 'layer5'), with P = softmax of the upsampled logits:
  segmenter      sum_i lambda_seg^i L_seg(I_s) + lambda_adv^i L_adv(I_t)        Eq. (5), L_seg Eq. (3)
                 L_adv = loss(D_i(P_t), source label)                           Eq. (4); LS-GAN Eq. (8)
  discriminator  0.5 loss(D_i(P_s), source) + 0.5 loss(D_i(P_t), target)        Eq. (2); LS-GAN Eq. (7)
Official-code conventions: source label 0, target label 1; the discriminator sees detached predictions;
the adversarial loss does not update the discriminator. "Ours (feature)": D_i sees backbone features instead.
Each entry of the returned dict is the loss of the state of that name and nothing else: the
stop_gradients below make the gradient of the summed losses route each term to exactly one state.
"""

import jax
import jax.numpy as jnp

from uda_jax.losses import SOURCE, TARGET, gan_loss
from uda_jax.methods import common


def disc_name(level):
  return f"d_{level}"


def create_states(config, rng, shapes):
  k_seg, *k_d = jax.random.split(rng, 3)
  seg = common.create_segmenter_state(config, k_seg, shapes["source_image"], shapes.get("axis_name"))
  states = {"seg": seg}
  for level, key in zip(common.levels(config), k_d):
    states[disc_name(level)] = common.create_discriminator_state(config, key, _disc_input_shape(config, seg, shapes))
  return states


def _disc_input_shape(config, seg, shapes):
  """What D sees on a target batch: the class map at image size, or the features at their own size and width."""
  if config.disc.input == "features":
    return common.feature_shape(seg, shapes["target_image"])
  n, h, w, _ = shapes["target_image"]
  return (n, h, w, config.model.num_classes)


def _disc_input(config, outputs, level):
  if config.disc.input == "features":
    return outputs["features"]
  return jax.nn.softmax(outputs[level], axis=-1)


def losses(params, states, batch, rng, config, axis_name=None):
  del rng  # deterministic scheme
  seg, cfg = states["seg"], config.loss
  lvls = common.levels(config)
  lambda_seg = {"main": cfg.lambda_seg_main, "aux": cfg.lambda_seg_aux}
  lambda_adv = {"main": cfg.lambda_adv_main, "aux": cfg.lambda_adv_aux}

  # Source then target forward, threading BatchNorm statistics as the official code's two forwards do.
  out_s, stats = common.segment(seg, params["seg"], seg.batch_stats, batch["source_image"])
  l_seg, per_level = common.segmentation_loss(out_s, batch["source_label"], {l: lambda_seg[l] for l in lvls},
                                              axis_name)
  out_t, stats = common.segment(seg, params["seg"], stats, batch["target_image"])

  result, metrics = {"seg": l_seg}, {f"seg_{l}": v for l, v in per_level.items()}
  for level in lvls:
    d, d_params = states[disc_name(level)], params[disc_name(level)]
    p_s, p_t = _disc_input(config, out_s, level), _disc_input(config, out_t, level)
    # Adversarial term: gradients reach the segmenter only (D frozen, as requires_grad=False officially).
    adv = gan_loss(d.apply_fn({"params": common.stop(d_params)}, p_t), SOURCE, cfg.gan)
    result["seg"] += lambda_adv[level] * adv
    # Discriminator term on detached predictions: gradients reach this discriminator only.
    d_s = d.apply_fn({"params": d_params}, jax.lax.stop_gradient(p_s))
    d_t = d.apply_fn({"params": d_params}, jax.lax.stop_gradient(p_t))
    result[disc_name(level)] = 0.5 * gan_loss(d_s, SOURCE, cfg.gan) + 0.5 * gan_loss(d_t, TARGET, cfg.gan)
    metrics[f"adv_{level}"] = adv
    thr = 0.0 if cfg.gan == "vanilla" else 0.5  # logits vs least-squares scores
    metrics[f"{disc_name(level)}_acc"] = 0.5 * (jnp.mean(d_s < thr) + jnp.mean(d_t > thr))
  return result, {"batch_stats": stats, "metrics": metrics}

