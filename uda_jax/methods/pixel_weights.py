"""GenMap (Tian, Qu, Payeur, eq. 3-4) as a part any scheme can take: per-pixel weights of its target adversarial
terms, so that confidently predicted target pixels are aligned less.

  p*_t   max softmax of the target prediction, per pixel (loss.genmap_from: 'ensemble', MRNet's z_main + 0.5 z_aux
         (z_main for a single-level model); 'prediction', the logits the run predicts with, z_main +
         eval.aux_weight z_aux (z_main alone in AdaptSegNet; in JAL + WTM, DecT2's when Dec2 has a WTM; the
         ensemble in MRNet, whose eval.aux_weight is 0.5); or 'level', each level's own map)
  d      0.01 where p*_t > T, exp(-p*_t) elsewhere                                          eq. 3, T = 0.9
  w      d + mu, stop-gradient                                                              eq. 4, mu = 0.1

Method 'pixel_weighted' always weights (by w, times its DisMap). With loss.genmap_weights=True, 'adaptsegnet',
'mrnet', 'jal_wtm' and 'fada' weight every target adversarial term by w: the segmenter's (it fools D less where
it is already confident) and, with loss.weight_disc, the target half of each discriminator's loss (eq. 9 of the
paper). No paper runs these combinations; they use the paper's T and mu unless overridden.
"""

import jax
import jax.numpy as jnp
from absl import logging

from uda_jax import models
from uda_jax.errors import UserError
from uda_jax.methods import common

GENMAP_FROM = ("ensemble", "prediction", "level")
# Schemes whose target adversarial terms take the weights (LSD-seg's D sees reconstructed images, not maps).
METHODS = ("adaptsegnet", "mrnet", "jal_wtm", "fada", "pixel_weighted")


def check(config):
  cfg = config.loss
  if not cfg.genmap_weights:
    return
  if config.method not in METHODS:
    raise UserError(f"loss.genmap_weights=True weights the target adversarial terms of {', '.join(METHODS)}, not "
                    f"of method {config.method!r}")
  if not 0.0 < cfg.genmap_threshold <= 1.0:
    raise UserError(f"loss.genmap_threshold={cfg.genmap_threshold!r}: T must lie in (0, 1] (1 = no protection)")
  if cfg.genmap_mu < 0:
    raise UserError(f"loss.genmap_mu={cfg.genmap_mu!r}: mu must be >= 0")
  if cfg.genmap_from not in GENMAP_FROM:
    raise UserError(f"loss.genmap_from={cfg.genmap_from!r}: choose one of {', '.join(GENMAP_FROM)}")
  if cfg.weight_grid not in ("image", "disc"):  # FADA's D answers at image size: the grid does not arise there
    raise UserError(f"loss.weight_grid={cfg.weight_grid!r}: choose 'image' or 'disc'")
  if config.method != "pixel_weighted":  # a combination (or configs/pixel_weighted.py's method overridden)
    logging.info("GenMap weights on the target adversarial terms of %r (loss.genmap_weights=True, T=%g, mu=%g, "
                 "from %s)", config.method, cfg.genmap_threshold, cfg.genmap_mu, cfg.genmap_from)


def genmap(logits, threshold, mu):
  """Eq. 3 plus mu (eq. 4): d + mu per pixel [N,H,W] from logits [N,H,W,C], stop-gradient."""
  p_max = jnp.max(jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1), axis=-1)
  return jnp.where(p_max > threshold, 0.01, jnp.exp(-p_max)) + mu


def genmap_logits(outputs, level, config):
  """The logits p*_t is read from for `level`'s weights (loss.genmap_from)."""
  genmap_from = config.loss.genmap_from
  if genmap_from == "level":
    return outputs[level]
  aux_weight = float(config.eval.aux_weight) if genmap_from == "prediction" else 0.5
  return models.prediction_logits(outputs, aux_weight if "aux" in outputs else 0.0)


def target_weights(out_t, config, predicted=None):
  """{level: w [N,H,W]} at the image size of the upsampled target logits, or None without loss.genmap_weights.
  `predicted`: the outputs the run predicts with where its heads are not out_t's (JAL + WTM's DecT2), for
  genmap_from='prediction'."""
  cfg = config.loss
  if not cfg.genmap_weights:
    return None
  if cfg.genmap_from == "prediction" and predicted is not None:
    out_t = predicted
  return {level: genmap(genmap_logits(out_t, level, config), cfg.genmap_threshold, cfg.genmap_mu)
          for level in common.levels(config)}
