"""The pixel-wise weighted scheme and MRNet as a user runs them: presets and paper rows, a resume that is bit-exact
with dropout and four states, and the command line on the toy."""

import json
import os

import numpy as np
from PIL import Image

import pixel_weighted
from step_utils import assert_resume_is_bit_exact, tiny_toy_cli
from uda_jax.tools import tables

CONFIG = "configs/pixel_weighted.py"


def _image_summaries(workdir, tag):
  """{step: number of images} of the `tag` image summaries in workdir's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag == tag:
            found[event.step] = len(tf.make_ndarray(value.tensor)) - 2  # width, height, then the PNGs
  return found


def test_default_is_the_papers_setting_and_rows_resolve(capsys):
  c = pixel_weighted.get_config()
  assert (c.method, c.model.head, c.model.head_norm, c.model.head_se, c.model.head_dropout) == (
      "pixel_weighted", "mrnet", "gn", True, 0.1)
  assert (c.loss.genmap_threshold, c.loss.genmap_mu, c.loss.feature_disc, c.loss.dismap) == (0.9, 0.1, True, True)
  assert (c.loss.lambda_adv_main, c.loss.lambda_adv_feat, c.loss.lambda_memory, c.loss.memreg_start) == (
      5e-4, 5e-4, 0.1, 15_000)
  assert (c.optim.lr, c.optim.nesterov, c.optim.warmup_steps, c.data.batch_size, c.eval.aux_weight) == (
      2e-4, True, 5_000, 2, 0.5)
  m = pixel_weighted.get_config("synthia,mrnet")
  assert (m.method, m.loss.lambda_adv_main, m.loss.disc_real, m.model.num_classes) == ("mrnet", 1e-3, "ensemble", 16)
  t1 = pixel_weighted.get_config("genmap_t1")
  assert (t1.loss.genmap_threshold, t1.loss.feature_disc, t1.loss.dismap) == (1.0, False, False)
  by_table = {}
  for row in pixel_weighted.ROWS:
    for stage in row.stages:
      pixel_weighted.get_config(stage.presets)
    by_table.setdefault(row.table, {})[(row.name, row.metric)] = row.published
  assert by_table["1"] == {("Source only", "mIoU"): 36.6, ("MRNet", "mIoU"): 45.5, ("Proposed", "mIoU"): 47.2}
  assert by_table["2"][("Proposed", "mIoU13")] == 50.9 and len(by_table["3"]) == 4
  tables.main([CONFIG, "--table", "3", "--root", "R"])
  out = capsys.readouterr().out
  assert "--config configs/pixel_weighted.py:gta5,genmap_t1 --workdir R/gta5_genmap_t1 --mode train" in out


def test_resume_is_bit_exact_with_dropout_and_four_states(tiny_toy_config, tmp_path):
  c = pixel_weighted.get_config("toy")
  with c.unlocked():
    c.update({k: tiny_toy_config[k] for k in ("data", "train")})
  c.model.width, c.disc.channels, c.optim.decay_steps, c.loss.memreg_start = 8, (8, 8, 8, 8), 100, 1
  straight = assert_resume_is_bit_exact(c, tmp_path)
  assert sorted(straight) == ["d_aux", "d_feat", "d_main", "seg"]


def test_toy_from_the_command_line_evaluates_the_ensemble(toy_data_dir, tmp_path):
  workdir = str(tmp_path / "toy")
  run = tiny_toy_cli(f"{CONFIG}:toy", workdir, toy_data_dir, "--config.loss.memreg_start=1")
  out = run()
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_final.json")) as f:
    final = json.load(f)
  assert final["step"] == 2 and 0 <= final["mIoU"] <= 100
  # the weight maps beside the prediction panels, on disk and in TensorBoard (issue 12 item 5)
  for name in ("step2", "eval_final"):
    written = set(os.listdir(os.path.join(workdir, "predictions", name)))
    for k in range(4):  # the toy's eval.num_images
      assert {f"{k:03d}_{m}.png" for m in ("panel", "maps", "genmap", "dismap", "weight")} <= written, written
  maps = np.asarray(Image.open(os.path.join(workdir, "predictions", "step2", "000_maps.png")))
  assert maps.shape == (32, 4 * 64, 3)  # image | GenMap | DisMap | weight at the eval size
  assert _image_summaries(workdir, "eval/weight_maps") == {2: 4}
  out = run("--mode=eval", "--config.eval.checkpoint=latest")  # the restored run, evaluated alike
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_latest_step2.json")) as f:
    assert json.load(f)["per_class"] == final["per_class"]
  bad = run("--config.loss.genmap_mu=-1", "--workdir", str(tmp_path / "bad"))
  assert bad.returncode != 0 and "loss.genmap_mu=-1" in bad.stderr and "Traceback" not in bad.stderr
