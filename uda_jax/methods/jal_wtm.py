"""JAL + WTM: "Joint Adversarial Learning for Domain Adaptation in Semantic Segmentation" (Zhang & Wang, AAAI 2020).

Multi-level AdaptSegNet (eq. 1-4: `adaptsegnet.forward` / `output_space`; Dec1 = aux decoder on ResNet conv4 /
VGG conv5, Dec2 = main decoder, D1 = d_aux, D2 = d_main) plus, P = softmax of the upsampled logits:
  JAL    lambda_jal  L(D1(P^2_t), source)                        eq. 5, D1 frozen: reaches Enc and Dec2
  WTM    W_DecT_i = WTM_i * W_Dec_i                              eq. 6, a 1x1 conv over each ASPP kernel seen as
         a map with Dec_i's input channels as channels (C x C: 1024 on ResNet conv4 / VGG fc7, 2048 on ResNet
         conv5), identity-initialised; P^iT = DecT_i(Enc_i(X)) for both domains   eq. 7
  Dwtm   0.5 L(Dwtm(P^lT_s), source) + 0.5 L(Dwtm(P^lT_t), target), detached    eq. 8, l = Dec1 (the lowest
         transferred level: Dec2 when only Dec2 has a WTM, Table 4 row 4)
  'wtm'  sum_i lambda_adv_wtm^i L(Dwtm(P^iT_t), source)          eq. 9, Dwtm frozen: reaches Enc and the WTMs
         (eq. 10 minimises it over G and WTM_i), so it is one term of the total, listed once, under 'wtm'
L is AdaptSegNet's loss (BCE, eq. 2-3; loss.gan='ls' for least squares). The paper leaves open, and we choose:
- Eq. 9 into W_Dec_i (loss.wtm_to_decoder, default False): DecT_i uses stop_gradient(W_Dec_i). The point of
  WTM is a decoder trained by the adversarial loss only, beside one trained by the segmentation loss; letting
  eq. 9 move W_Dec_i would make Dec_i answer to the transferred decoder's adversarial loss too.
- ASPP biases: a bias has no input-channel axis, so WTM leaves it alone; DecT_i uses Dec_i's biases, under the
  same stop-gradient (trained by eq. 9 only with wtm_to_decoder). WTM itself is a 1x1 conv without bias.
- lambda_jal (loss.lambda_adv_jal) is not given: lambda^2_adv (1e-3), the weight of Dec2's other adversarial term.
- Table 4's "JAL" column is eq. 5. Eq. 9 at i = 2 (Dwtm, trained on Dec1's maps, judging DecT2) is part of WTM.
loss.genmap_weights=True weights every target term (eq. 2-5, 8, 9; the transferred maps by their level's
weights) per pixel by GenMap (methods/pixel_weights.py).
Evaluation and --mode=predict use DecT2 when Dec2 has a WTM (`inference_segmenters`; eval.original_decoder
adds Dec2 as a column). Every loss comes from one forward before any update (there is no official code).
"""

import jax
import jax.numpy as jnp

from uda_jax import models, optim, state as state_lib
from uda_jax.errors import UserError
from uda_jax.methods import adaptsegnet, common, pixel_weights
from uda_jax.ops import resize_bilinear

LEVELS = ("aux", "main")  # Dec1, Dec2
D_WTM = "d_wtm"


def check(config):
  cfg, bad = config.loss, [l for l in config.loss.wtm_levels if l not in LEVELS]
  if bad:
    raise UserError(f"loss.wtm_levels={tuple(cfg.wtm_levels)!r}: levels are 'aux' (Dec1) and 'main' (Dec2)")
  if not config.model.multi_level:
    raise UserError(f"method 'jal_wtm' (loss.jal={cfg.jal}, loss.wtm_levels={tuple(cfg.wtm_levels)!r}) needs "
                    "model.multi_level=True: JAL and WTM act through the low-level decoder Dec1")
  if config.disc.arch != "fc" or config.disc.input != "output":
    raise UserError("method 'jal_wtm' adapts in the output space: it needs disc.arch='fc' and disc.input='output', "
                    f"not {config.disc.arch!r} / {config.disc.input!r}")


def create_states(config, rng, shapes):
  check(config)
  k_seg, *k_d = jax.random.split(rng, 3)  # as AdaptSegNet: without JAL and WTM it is the same run
  seg = common.create_segmenter_state(config, k_seg, shapes["source_image"], shapes.get("axis_name"))
  n, h, w, _ = shapes["target_image"]
  states = {"seg": seg, **adaptsegnet.create_discriminators(config, k_d, (n, h, w, config.model.num_classes))}
  if config.loss.wtm_levels:
    kernels = {l: _decoder_kernel(seg.params, config, l) for l in LEVELS if l in config.loss.wtm_levels}
    identity = {l: {"kernel": jnp.eye(k.shape[2], dtype=k.dtype)} for l, k in kernels.items()}  # [C, C]
    states["wtm"] = state_lib.TrainState.create(apply_fn=transfer, params=identity, tx=optim.wtm_sgd(config.optim))
    states[D_WTM] = common.create_discriminator_state(config, jax.random.fold_in(rng, 3),
                                                      (n, h, w, config.model.num_classes))
  return states


def _decoder_kernel(seg_params, config, level):
  return seg_params[models.head_name(config.model, level)]["conv2d_list_0"]["conv"]["kernel"]


def transfer(head_params, m):
  """Eq. 6 on every ASPP branch: kernel[kh, kw, c, k] -> sum_c' kernel[kh, kw, c', k] m[c', c]; biases kept.
  HIGHEST precision: an identity WTM must give back the decoder bit for bit on any backend (TPU included)."""
  return {b: {"conv": {**p["conv"], "kernel": jnp.einsum("hwck,cd->hwdk", p["conv"]["kernel"], m,
                                                         precision=jax.lax.Precision.HIGHEST)}}
          for b, p in head_params.items()}


def transferred_logits(params, outputs, level, config, size):
  """Eq. 7: P^iT's logits, DecT_i applied to the features Dec_i reads, upsampled to the image `size`."""
  head = params["seg"][models.head_name(config.model, level)]
  head = head if config.loss.wtm_to_decoder else common.stop(head)
  features = outputs["features" if level == "main" else "features_aux"]
  logits = models.build_head(config.model).apply({"params": transfer(head, params["wtm"][level]["kernel"])}, features)
  return resize_bilinear(logits.astype(features.dtype), size)


def losses(params, states, batch, rng, config, axis_name=None):
  cfg = config.loss
  out_s, out_t, stats, l_seg, metrics = adaptsegnet.forward(params, states, batch, config, axis_name, rng)  # eq. 1, 4
  size_s, size_t = batch["source_image"].shape[1:3], batch["target_image"].shape[1:3]
  z_t = {l: transferred_logits(params, out_t, l, config, size_t) for l in cfg.wtm_levels}  # eq. 7, target side
  predicted = {**out_t, "main": z_t["main"]} if "main" in z_t else out_t  # DecT2 predicts (inference_segmenters)
  w = pixel_weights.target_weights(out_t, config, predicted) or {}  # GenMap (loss.genmap_weights), else none
  w_disc = w if cfg.weight_disc else {}
  adv, per_disc, adv_metrics = adaptsegnet.output_space(params, states, out_s, out_t, config, w,
                                                        cfg.weight_disc)  # eq. 2-4
  per_state, metrics = {"seg": l_seg + adv, **per_disc}, {**metrics, **adv_metrics}
  grid = cfg.weight_grid
  if cfg.jal:  # eq. 5: Dec2's target map must also fool D1
    metrics["adv_jal"] = adaptsegnet.fool(states, params, ["d_aux"], jax.nn.softmax(out_t["main"], -1), cfg.gan,
                                          w.get("main"), grid)
    per_state["seg"] += cfg.lambda_adv_jal * metrics["adv_jal"]
  if cfg.wtm_levels:
    p_t = {l: jax.nn.softmax(z, -1) for l, z in z_t.items()}
    low = "aux" if "aux" in cfg.wtm_levels else "main"
    p_s = jax.nn.softmax(transferred_logits(params, out_s, low, config, size_s), -1)
    per_state[D_WTM], metrics[f"{D_WTM}_acc"] = adaptsegnet.discriminator_loss(
        states[D_WTM], params[D_WTM], p_s, p_t[low], cfg.gan, w_disc.get(low), grid)  # eq. 8
    lambda_wtm = {"main": cfg.lambda_adv_wtm_main, "aux": cfg.lambda_adv_wtm_aux}
    per_state["wtm"] = 0.0
    for level, p in p_t.items():  # eq. 9
      metrics[f"adv_wtm_{level}"] = adaptsegnet.fool(states, params, [D_WTM], p, cfg.gan, w.get(level), grid)
      per_state["wtm"] += lambda_wtm[level] * metrics[f"adv_wtm_{level}"]
      m = jax.lax.stop_gradient(params["wtm"][level]["kernel"])  # how far WTM_i has moved from identity
      metrics[f"wtm_{level}_shift"] = jnp.max(jnp.abs(m - jnp.eye(m.shape[0], dtype=m.dtype)))
  return per_state, {"batch_stats": stats, "metrics": metrics}


def inference_segmenters(config, states):
  """DecT2 (Enc with the transferred high-level decoder) when Dec2 has a WTM, else Dec2; eval.original_decoder
  adds Dec2 beside DecT2."""
  seg = states["seg"]
  if "main" not in config.loss.wtm_levels:
    return {"": seg}
  name = models.head_name(config.model, "main")
  params = {**seg.params, name: transfer(seg.params[name], states["wtm"].params["main"]["kernel"])}
  out = {"DecT2": seg.replace(params=params)}
  if config.eval.original_decoder:
    out["Dec2"] = seg
  return out
