"""--mode=eval on imported released weights: the evaluation sees exactly the imported network."""

import jax
import numpy as np

import official_keys as ok
from uda_jax import evaluate, models, train
from uda_jax.config_base import TOY_CLASSES
from uda_jax.data import pipeline
from uda_jax.tools import import_torch

BLOCKS = (1, 1, 2, 1)


def test_eval_of_imported_release_matches_a_direct_forward(tiny_toy_config, tmp_path):
  # A released-AdaptSegNet-style state dict (un-prefixed DeeplabMulti names, 4 ASPP branches per head).
  shapes = ok.resnet_keys(BLOCKS)
  ok.aspp_keys(shapes, "layer5", 1024, 19)
  ok.aspp_keys(shapes, "layer6", 2048, 19)
  variables, report = import_torch.import_state_dict("deeplabv2_resnet101", ok.randomize(shapes, seed=3),
                                                     blocks=BLOCKS)
  assert not report.missing and len(report.unused_by_design) == 8  # branches 2 and 3 of both heads
  weights = str(tmp_path / "weights")
  import_torch.save_variables(variables, weights, report)

  c = tiny_toy_config
  c.model.blocks, c.model.width, c.init_from = BLOCKS, 64, weights
  summary = train.evaluate_checkpoint(c, str(tmp_path / "eval"))

  # The same evaluation by hand with the imported variables.
  model = models.build_segmenter(c.model)
  cm = np.zeros((19, 19), np.int64)
  forward = jax.jit(lambda x: model.apply(variables, x, train=False)["main"])
  for batch in pipeline.eval_iterator(c.data):
    pred = evaluate.predict(forward, batch["image"], batch["label"].shape[1:3])
    cm += np.asarray(evaluate.confusion_matrix(pred, batch["label"], batch["mask"], 19))
  want = evaluate.summarize(cm, [str(i) for i in range(19)], TOY_CLASSES)
  assert abs(summary["mIoU"] - want["mIoU"]) < 1e-9
  assert (tmp_path / "eval" / "eval_best_step0.md").exists()
