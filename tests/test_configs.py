"""Every preset builds a config whose datasets, label tables and class sets exist and agree."""

import adaptsegnet
import jal_wtm
import pixel_weighted
import pytest

from uda_jax import methods, models
from uda_jax.data import builders, labels
from uda_jax.errors import UserError


def _registered(name, data_dir):
  return builders.get_builder(name, str(data_dir)).name == name.split("/")[0]


CONFIGS = {"adaptsegnet": adaptsegnet, "jal_wtm": jal_wtm, "pixel_weighted": pixel_weighted}


@pytest.mark.parametrize("module,preset", [(m, p) for m in CONFIGS for p in sorted(CONFIGS[m].PRESETS)])
def test_preset_is_consistent(module, preset, tmp_path):
  c = CONFIGS[module].get_config(preset)
  methods.get(c.method)
  assert c.model.arch in models.ARCHS
  for field in ("source", "target", "eval"):
    assert _registered(c.data[field], tmp_path), (module, preset, c.data[field])
  for field in ("source_label_map", "eval_label_map"):
    table = labels.LABEL_MAPS[c.data[field]]
    assert table.max() == 255 and table[table != 255].max() < c.model.num_classes
  names, _ = labels.CLASS_SETS[c.eval.class_set]
  assert len(names) == c.model.num_classes
  assert all(0 <= i < c.model.num_classes for i in c.eval.class_subset)


def test_default_is_the_official_multi_level_setting():
  c = adaptsegnet.get_config()
  assert (c.loss.lambda_seg_main, c.loss.lambda_seg_aux) == (1.0, 0.1)
  assert (c.loss.lambda_adv_main, c.loss.lambda_adv_aux) == (1e-3, 2e-4)
  assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.head_lr_mult) == (2.5e-4, 0.9, 5e-4, 10.0)
  assert (c.optim.decay_steps, c.train.num_steps, c.optim.d_lr) == (250_000, 150_000, 1e-4)
  assert (c.optim.d_b1, c.optim.d_b2, c.data.batch_size) == (0.9, 0.99, 1)
  assert c.data.source_size == (720, 1280) and c.data.target_size == (512, 1024)
  assert c.model.multi_level and c.model.aspp_branches == 2 and c.model.depth == 101


def test_presets_compose_and_unknown_ones_fail():
  c = adaptsegnet.get_config("toy,lsgan")
  assert c.loss.gan == "ls" and not c.model.multi_level and c.data.source == "uda_toy/source"
  assert adaptsegnet.get_config("output_0.004").loss.lambda_adv_main == 0.004
  synthia = adaptsegnet.get_config("synthia")
  assert synthia.eval.class_set == "synthia16" and synthia.eval.class_subset == ()
  with pytest.raises(UserError, match="unknown preset"):
    adaptsegnet.get_config("toy,nonsense")
