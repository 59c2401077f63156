"""Source only: the segmenter trained on labelled source images alone (the papers' "Baseline" rows).

Also the target oracle when `config.data.source` names the labelled target training split.
"""


from uda_jax.methods import common


def create_states(config, rng, shapes):
  return {"seg": common.create_segmenter_state(config, rng, shapes["source_image"], shapes.get("axis_name"))}


def losses(params, states, batch, rng, config, axis_name=None):
  seg, cfg = states["seg"], config.loss
  lambda_seg = {"main": cfg.lambda_seg_main, "aux": cfg.lambda_seg_aux}
  out_s, stats = common.segment(seg, params["seg"], seg.batch_stats, batch["source_image"], rng=rng)  # rng: dropout
  l_seg, per_level = common.segmentation_loss(
      out_s, batch["source_label"], {l: lambda_seg[l] for l in common.levels(config)}, axis_name,
      cfg.get("ce_reduction", "mean"))
  return {"seg": l_seg}, {"batch_stats": stats, "metrics": {f"seg_{l}": v for l, v in per_level.items()}}


