"""LSD-seg as a user runs it: the as-run defaults and every paper row, a bit-exact resume with three states, the
command line on the toy with reconstructions in TensorBoard, and the crop checks of the input pipeline."""

import os

import numpy as np
import pytest
from PIL import Image

import lsdseg
from step_utils import assert_resume_is_bit_exact, tiny_toy_cli
from test_pixel_weighted_cli import _image_summaries
from uda_jax.data import pipeline
from uda_jax.errors import UserError
from uda_jax.tools import tables

CONFIG = "configs/lsdseg.py"
TINY = ("--config.model.fc_dim=32", "--config.gen.width=8", "--config.disc.width=8")


def test_default_is_the_official_setting_and_rows_resolve(capsys):
  c = lsdseg.get_config()
  assert (c.method, c.model.arch, c.model.num_classes, c.data.batch_size) == ("lsdseg", "fcn8s", 16, 1)
  assert (c.data.source_aug.crop, c.data.source_aug.crop_margin, c.data.target_aug.crop_margin) == ((320, 640), 0, 50)
  assert (c.data.source_size, c.data.target_size, c.data.eval_size) == (None, None, (320, 640))
  assert (c.data.eval_resize, c.eval.upsample, c.loss.ce_reduction) == ("lanczos", "nearest", "sum")
  assert (c.loss.lambda_adv_f, c.loss.lambda_aux_f, c.loss.lambda_adv_g, c.loss.lambda_rec) == (0.1, 0.1, 0.1, 1.0)
  assert (c.optim.segmenter, c.optim.lr, c.optim.bias_lr_mult, c.optim.step_every) == ("adam", 1e-5, 2.0, 23_800)
  assert lsdseg.get_config("size1024").data.target_aug.crop == (512, 1024)
  assert lsdseg.get_config("gta5").model.num_classes == 19
  by_table = {}
  for row in lsdseg.ROWS:
    for stage in row.stages:
      lsdseg.get_config(stage.presets)
    by_table.setdefault(row.table, {})[row.name] = row.published
  assert by_table["2a"] == {"Ours - Source only": 26.8, "Ours - Adapted": 36.1}
  assert by_table["2b"]["Ours - Adapted"] == 37.1 and len(by_table["3"]) == 6 and len(by_table["4"]) == 5
  assert by_table["5"] == {"Source-only": 36.1, "Ours": 44.4}
  tables.main([CONFIG, "--table", "4", "--root", "R"])
  out = capsys.readouterr().out
  assert "--config configs/lsdseg.py:synthia,size640,no_aux --workdir R/synthia_size640_no_aux --mode train" in out


def test_resume_is_bit_exact_with_dropout_and_three_states(tiny_toy_config, tmp_path):
  c = lsdseg.get_config("toy")
  with c.unlocked():
    c.update({k: tiny_toy_config[k] for k in ("data", "train")})
  c.data.source_aug = c.data.target_aug = None
  c.model.width, c.model.fc_dim, c.gen.width, c.disc.width = 8, 32, 8, 8
  straight = assert_resume_is_bit_exact(c, tmp_path)
  assert sorted(straight) == ["disc", "gen", "seg"]


def test_toy_from_the_command_line_with_reconstructions(toy_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  run = tiny_toy_cli(f"{CONFIG}:toy", workdir, toy_data_dir, *TINY)
  out = run()
  assert out.returncode == 0, out.stderr[-3000:]
  assert "mIoU" in out.stdout
  grid = np.asarray(Image.open(os.path.join(workdir, "predictions", "step2", "reconstructions.png")))
  assert grid.shape == (2 * 32, 2 * 64, 3)  # (source | fake) over (target | fake)
  assert _image_summaries(workdir, "train/reconstructions") == {2: 2}  # a source and a target row


def test_crop_larger_than_the_image_is_one_clear_error(toy_data_dir):
  c = lsdseg.get_config("toy")
  c.data.data_dir = toy_data_dir
  c.data.source_size = None  # native 96x192 toy images, cropped without padding
  c.data.source_aug.update(crop=(96, 160), crop_margin=0)
  with pytest.raises(UserError, match=r"uda_toy/source:train: an image is smaller than data.source_aug.crop"):
    next(pipeline.train_iterator(c.data, seed=0, start_step=0))
  c.data.source_aug.update(crop=(64, 128), crop_margin=10)
  batch = next(pipeline.train_iterator(c.data, seed=0, start_step=0))
  assert batch["source_image"].shape[1:3] == (64, 128)
  c.data.source_size = (64, 128)  # a resize below the crop is refused before reading anything
  with pytest.raises(UserError, match="smaller than data.source_aug.crop"):
    pipeline.train_iterator(c.data, seed=0, start_step=0)
