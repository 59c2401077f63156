"""MRNet: "Unsupervised Scene Adaptation with Memory Regularization in vivo" (Zheng & Yang, IJCAI 2020), as
layumi/Seg-Uncertainty trainer_ms.py runs it; the "DA without pixel-wise weighting" row of the pixel-wise
weighted paper's Table 3.

Multi-level output-space AdaptSegNet (`adaptsegnet.forward` / `output_space`) on MRNet's segmenter
(model.head='mrnet': aux decoder on layer3, main on concat(layer4, layer3), Dropout2d from the step's rng), plus
  memory   lambda_kl [KL(m_t || p^main_t) + KL(m_t || p^aux_t)]  from step loss.memreg_start (15k), target only
           m = softmax(0.5 z_aux + z_main), stop-gradient; KL summed over classes, averaged over pixels
           (as run: KLDivLoss(size_average=False) / (N H W), on the upsampled logits)
As run, D's real input is the source ensemble m_s for both levels (loss.disc_real='ensemble') and evaluation
takes argmax(z_main + 0.5 z_aux) (eval.aux_weight=0.5). Not ported: MRNet's MsImageDis (3-scale least-squares
discriminator with gradient penalty); the five-conv D here is what the pixel-wise weighted paper states for D.
"""

import jax
import jax.numpy as jnp

from uda_jax import losses as L
from uda_jax.errors import UserError
from uda_jax.methods import adaptsegnet, pixel_weights


def check(config):
  if not config.model.multi_level or config.model.head != "mrnet":
    raise UserError(f"method {config.method!r} runs on MRNet's segmenter: it needs model.head='mrnet' and "
                    f"model.multi_level=True, not {config.model.head!r} / {config.model.multi_level}")


def create_states(config, rng, shapes):
  check(config)
  return adaptsegnet.create_states(config, rng, shapes)


def memory_regularisation(out_t, step, config, axis_name=None):
  """The memory term (unweighted by lambda_kl): 0 before loss.memreg_start."""
  m = jax.lax.stop_gradient(jax.nn.softmax(adaptsegnet.ensemble_logits(out_t), axis=-1))
  log_m = jnp.log(jnp.maximum(m, jnp.finfo(m.dtype).tiny))
  kl = sum(jnp.sum(m * (log_m - jax.nn.log_softmax(out_t[level], axis=-1)), axis=-1) for level in ("main", "aux"))
  kl = L.masked_mean(kl, jnp.ones(kl.shape, bool), axis_name)
  return jnp.where(step >= config.loss.memreg_start, kl, 0.0)


def losses(params, states, batch, rng, config, axis_name=None):
  out_s, out_t, stats, l_seg, metrics = adaptsegnet.forward(params, states, batch, config, axis_name, rng)
  adv, per_disc, adv_metrics = adaptsegnet.output_space(params, states, out_s, out_t, config,
                                                        pixel_weights.target_weights(out_t, config),
                                                        config.loss.weight_disc)
  metrics["memory"] = memory_regularisation(out_t, states["seg"].step, config, axis_name)
  seg = l_seg + adv + config.loss.lambda_memory * metrics["memory"]
  return {"seg": seg, **per_disc}, {"batch_stats": stats, "metrics": {**metrics, **adv_metrics}}
