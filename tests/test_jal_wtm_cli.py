"""JAL + WTM as a user runs it: presets and paper rows, a resume that is bit-exact with the extra states, and the
command line on the toy with both decoders evaluated."""

import json
import os

import numpy as np

import jal_wtm
from step_utils import assert_resume_is_bit_exact, tiny_toy_cli
from uda_jax.tools import tables

CONFIG = "configs/jal_wtm.py"


def test_default_is_the_papers_setting_and_rows_resolve(capsys):
  c = jal_wtm.get_config()
  assert c.method == "jal_wtm" and c.loss.jal and c.loss.wtm_levels == ("aux", "main")
  assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (2.5e-4, 0.9, 1e-4)
  assert (c.optim.wtm_lr, c.optim.wtm_momentum, c.optim.wtm_weight_decay, c.optim.d_lr) == (1e-4, 0.9, 0.0, 1e-4)
  assert (c.loss.lambda_adv_aux, c.loss.lambda_adv_main, c.loss.lambda_seg_aux, c.loss.lambda_seg_main) == (
      2e-4, 1e-3, 0.1, 1.0)
  assert (c.loss.lambda_adv_wtm_aux, c.loss.lambda_adv_wtm_main) == (2e-4, 1e-3)
  assert (c.optim.decay_steps, c.train.num_steps, c.model.aspp_branches) == (250_000, 150_000, 4)
  assert c.data.source_aug.crop == (512, 1024) and c.data.target_size == (512, 1024)
  vgg = jal_wtm.get_config("synthia,vgg16,wtm_dec2")
  assert (vgg.model.arch, vgg.model.multi_level, vgg.model.num_classes) == ("deeplabv2_vgg16", True, 16)
  assert (vgg.loss.jal, vgg.loss.wtm_levels, vgg.data.source_size) == (False, ("main",), (760, 1280))
  by_table = {}
  for row in jal_wtm.ROWS:
    for stage in row.stages:
      jal_wtm.get_config(stage.presets)
    by_table.setdefault(row.table, {})[(row.name, row.metric)] = row.published
  assert by_table["1"][("Ours(DecT2) R", "mIoU")] == 43.5 and by_table["2"][("Ours(DecT2) V", "mIoU13")] == 42.2
  assert len(by_table["3"]) == 8 and by_table["3"][("JAL", "mIoU")] == 36.7
  assert len(by_table["4"]) == 12 and by_table["4"][("row 6 (full) Res101", "mIoU")] == 43.5
  tables.main([CONFIG, "--table", "4", "--root", "R"])
  out = capsys.readouterr().out
  assert "--config configs/jal_wtm.py:gta5,vgg16,wtm_dec1 --workdir R/gta5_vgg16_wtm_dec1 --mode train" in out


def test_resume_is_bit_exact_with_the_wtm_and_dwtm_states(tiny_toy_config, tmp_path):
  c = jal_wtm.get_config("toy")
  with c.unlocked():
    c.update({k: tiny_toy_config[k] for k in ("data", "train")})
  c.model.width, c.disc.channels, c.optim.decay_steps = 8, (8, 8, 8, 8), 100
  # The paper's WTM lr and weights move an identity WTM by ~1e-8 in 4 steps: larger ones make it visible.
  c.optim.wtm_lr, c.loss.lambda_adv_wtm_aux, c.loss.lambda_adv_wtm_main = 100.0, 1.0, 1.0
  straight = assert_resume_is_bit_exact(c, tmp_path)
  assert sorted(straight) == ["d_aux", "d_main", "d_wtm", "seg", "wtm"]
  m = np.asarray(straight["wtm"].params["aux"]["kernel"])
  assert np.abs(m - np.eye(len(m))).max() > 1e-6


def test_toy_from_the_command_line_writes_both_decoders_columns(toy_data_dir, tmp_path):
  workdir = str(tmp_path / "toy")
  run = tiny_toy_cli(f"{CONFIG}:toy,original_decoder", workdir, toy_data_dir)
  out = run()
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_final.json")) as f:
    final = json.load(f)
  assert final["step"] == 2 and 0 <= final["extra"]["Dec2 mIoU"] <= 100
  with open(os.path.join(workdir, "eval_history.csv")) as f:
    assert f.readline().rstrip().endswith(",mIoU,Dec2 mIoU,pixel_acc")
  out = run("--mode=eval", "--config.eval.checkpoint=latest")  # the restored DecT2 and Dec2, the same numbers
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_latest_step2.json")) as f:
    again = json.load(f)
  assert (again["mIoU"], again["extra"]) == (final["mIoU"], final["extra"])
