"""FADA: "Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic Segmentation" (Wang et al.,
ECCV 2020), the adversarial stage as the official train_adv.py runs it.

G = C o F (DeepLab-v2, features f = layer4 / VGG fc7); D the fine-grained discriminator, 2K channels
[source classes | target classes] at image size; a the domain knowledge of eq. 7 / 8 (stop-gradient):
  encodings      soft  a = min(softmax(z / T), clip)        eq. 8 + confidence clipping, not renormalised
                 hard  a = onehot(argmax z) where max softmax(z / T) >= clip, other pixels ignored  eq. 7
                 binary a = 1 (K = 1 per domain: the traditional discriminator of eq. 1 / 4)
  discriminator  L_D = 0.5 SCE(D(f_s), [a_s|0]) + 0.5 SCE(D(f_t), [0|a_t])            eq. 5, f detached
  segmenter      L_seg(z_s / T, y_s) + lambda_adv SCE(D(f_t), [a_t|0])                eq. 2, 3, 6, D frozen
SCE is the cross-entropy against a target distribution over all 2K channels, averaged over pixels; with
loss.genmap_weights it weights each target pixel by GenMap (methods/pixel_weights.py: in eq. 6 and, with
loss.weight_disc, in eq. 5's target half). As run,
the segmentation loss is on the temperature-scaled source logits (loss.seg_on_scaled_logits=False: the
plain logits of eq. 3). Every loss comes from one forward before any update, which is exactly the official
order (its D losses use the features computed before fe.step() and the D weights before D.step()).
"""

import jax
import jax.numpy as jnp

from uda_jax import losses as L
from uda_jax.errors import UserError
from uda_jax.methods import common, pixel_weights

ENCODINGS = ("soft", "hard", "binary")
DISC = "d_main"


def classes_per_domain(config):
  return 1 if config.loss.encoding == "binary" else config.model.num_classes


def create_states(config, rng, shapes):
  if config.loss.encoding not in ENCODINGS:
    raise UserError(f"loss.encoding {config.loss.encoding!r} is not known; choose one of {', '.join(ENCODINGS)}")
  if config.disc.arch != "pixel":
    raise UserError(f"method 'fada' needs disc.arch='pixel' (its fine-grained discriminator), not "
                    f"{config.disc.arch!r}")
  k_seg, k_d = jax.random.split(rng)
  seg = common.create_segmenter_state(config, k_seg, shapes["source_image"], shapes.get("axis_name"))
  d = common.create_discriminator_state(config, k_d, common.feature_shape(seg, shapes["target_image"]),
                                        classes_per_domain(config))
  return {"seg": seg, DISC: d}


def domain_knowledge(logits, cfg):
  """(a [N,H,W,K'], mask [N,H,W] of the pixels that count) from upsampled logits; stop-gradient."""
  p = jax.nn.softmax(jax.lax.stop_gradient(logits) / cfg.temperature, axis=-1)
  if cfg.encoding == "soft":
    return jnp.minimum(p, cfg.confidence), None
  if cfg.encoding == "hard":
    k = p.shape[-1]
    return jax.nn.one_hot(jnp.argmax(p, -1), k, dtype=p.dtype), jnp.max(p, -1) >= cfg.confidence
  return jnp.ones((*p.shape[:-1], 1), p.dtype), None


def encode(a, domain):
  """Domain encoding [a; 0] (source, domain 0) or [0; a] (target, domain 1)."""
  zero = jnp.zeros_like(a)
  return jnp.concatenate([a, zero] if domain == L.SOURCE else [zero, a], axis=-1)


def losses(params, states, batch, rng, config, axis_name=None):
  del rng  # deterministic scheme
  seg, d, cfg = states["seg"], states[DISC], config.loss
  out_s, stats = common.segment(seg, params["seg"], seg.batch_stats, batch["source_image"])
  out_t, stats = common.segment(seg, params["seg"], stats, batch["target_image"])
  size = batch["source_image"].shape[1:3], batch["target_image"].shape[1:3]

  z_s = out_s["main"] / cfg.temperature if cfg.seg_on_scaled_logits else out_s["main"]
  ce = L.cross_entropy(z_s, batch["source_label"], axis_name)  # eq. 3
  (a_s, m_s), (a_t, m_t) = domain_knowledge(out_s["main"], cfg), domain_knowledge(out_t["main"], cfg)
  w_t = (pixel_weights.target_weights(out_t, config) or {}).get("main")  # GenMap, if loss.genmap_weights

  # Eq. 6: target features should read as source of their class; D frozen, gradients reach G only.
  d_frozen = d.apply_fn({"params": common.stop(params[DISC])}, out_t["features"], size[1])
  adv = L.soft_cross_entropy(d_frozen, encode(a_t, L.SOURCE), m_t, axis_name, w_t)
  # Eq. 5 on detached features: gradients reach D only.
  d_s = d.apply_fn({"params": params[DISC]}, jax.lax.stop_gradient(out_s["features"]), size[0])
  d_t = d.apply_fn({"params": params[DISC]}, jax.lax.stop_gradient(out_t["features"]), size[1])
  l_d = (0.5 * L.soft_cross_entropy(d_s, encode(a_s, L.SOURCE), m_s, axis_name)
         + 0.5 * L.soft_cross_entropy(d_t, encode(a_t, L.TARGET), m_t, axis_name, w_t if cfg.weight_disc else None))

  source_mass = lambda logits: jnp.sum(jax.nn.softmax(logits, -1)[..., :logits.shape[-1] // 2], -1)
  metrics = {"seg_main": ce, "adv_main": adv,
             f"{DISC}_acc": 0.5 * (jnp.mean(source_mass(d_s) > 0.5) + jnp.mean(source_mass(d_t) < 0.5))}
  if w_t is not None:
    metrics["weight_mean"] = jnp.mean(w_t)
  if m_t is not None:
    metrics["encoding_kept"] = 0.5 * (jnp.mean(m_s) + jnp.mean(m_t))
  per_state = {"seg": cfg.lambda_seg_main * ce + cfg.lambda_adv_main * adv, DISC: l_d}
  return per_state, {"batch_stats": stats, "metrics": metrics}
