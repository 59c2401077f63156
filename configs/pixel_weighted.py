r"""Pixel-wise weighted adversarial adaptation (Tian, Qu, Payeur) on MRNet (Zheng & Yang, IJCAI 2020).

Default (no preset): the full method (GenMap T = 0.9, mu = 0.1, refined by DisMap), GTA5 -> Cityscapes, MRNet's
DeepLab-v2 ResNet-101: 47.2 mIoU (Tables 1 and 3). There is no public code for the scheme
(methods/pixel_weighted.py follows the paper and lists its choices); MRNet follows layumi/Seg-Uncertainty
(methods/mrnet.py).

  python -m uda_jax.tools.import_torch --arch deeplabv2_resnet101 \
      --input DeepLab_resnet_pretrained_init-f81d91e8.pth --output weights/deeplab_init
  python -m uda_jax.main --config configs/pixel_weighted.py --workdir runs/pw --config.init_from=weights/deeplab_init
(the decoders are MRNet's, not DeepLab's: they start from their own initialisation, as MRNet's do.)

Presets (combine with commas, e.g. `:synthia,mrnet`):
  pairs      gta5 (default) | synthia (SYNTHIA -> Cityscapes; Table 2's 13-class mIoU is the mIoU13 column)
  Table 3    mrnet ("DA without pixel-wise weighting": MRNet as run) | genmap_t1 (GenMap T = 1) |
             genmap (GenMap T = 0.9) | full (GenMap T = 0.9 + DisMap, the default)
  source_only  MRNet's segmenter on the source alone (Tables 1-2 "Source only")
  coarse     weights averaged over D's patches and D_aux on the feature grid (loss.weight_grid='disc')
  toy        the embedded toy pair through the same code (README "Toy benchmark"), with toy,mrnet / toy,genmap
    python -m uda_jax.main --config configs/pixel_weighted.py:toy --workdir runs/toy_pw

Every paper row with its published mIoU and exact commands:
  python -m uda_jax.tools.tables configs/pixel_weighted.py [--table N] [--run ROOT | --collect ROOT]
  Table 1 GTA5 (19 classes):     Source only 36.6, MRNet 45.5, Proposed 47.2
  Table 2 SYNTHIA (13 classes):  Source only 38.6, MRNet 50.2, Proposed 50.9
  Table 3 GTA5 ablation:         MRNet 45.5, GenMap T=1 46.5, GenMap T=0.9 46.8, GenMap T=0.9 + DisMap 47.2

MRNet as its published command runs it (README stage I of Seg-Uncertainty): decoders with GroupNorm(32) and an SE
block, Dropout2d 0.1; batch 2 + 2; GTA5 resized to 1280x720 and randomly cropped to 1024x512, Cityscapes at
1024x512; SGD Nesterov, lr 2e-4 (decoders 10x), momentum 0.9, weight decay 5e-4, linear warm-up over 5k steps
from 0.1x, then poly over 100k, over MRNet's parameter list, which names each backbone tensor once per enclosing
module and which PyTorch <= 1.4 SGD steps entry by entry (optim.legacy_sgd; --config.optim.legacy_sgd=False
steps every tensor once); Adam 1e-4 (0.9, 0.99) for D; lambda_seg aux 0.5; lambda_adv 2e-4 / 1e-3;
memory regularisation 0.1 from step 15k; D's real input the source ensemble; evaluation on z_main + 0.5 z_aux.
Training stops at 25k, the snapshot that README continues from. Left out of that command: its class-balanced
loss and hard-pixel selection (--class-balance, --only-hard-label: Seg-Uncertainty additions, not MRNet's
memory regularisation) and the multi-scale least-squares discriminator (the paper states the five-conv D with
BCE, eq. 2). From the pixel-wise weighted paper: T = 0.9 (1 for Table 3's T=1 row), mu = 0.1, lambda_adv = 5e-4
(main level and D_aux; the auxiliary level keeps MRNet's 2e-4), D_aux three 1x1 convs + classifier.
"""

from uda_jax import config_base, rows
from uda_jax.errors import UserError


def _base():
  c = config_base.base_config()
  c.method = "pixel_weighted"
  c.model.multi_level, c.model.head, c.model.head_norm, c.model.head_se = True, "mrnet", "gn", True
  c.optim.lr, c.optim.nesterov, c.optim.warmup_steps = 2e-4, True, 5_000
  c.optim.legacy_sgd = True  # MRNet's backbone tensors listed 1x / 3x / 4x, stepped by the old torch SGD loop
  c.optim.decay_steps, c.train.num_steps = 100_000, 25_000
  c.data.batch_size = 2
  c.data.source_aug = config_base.augmentation(crop=(512, 1024))
  c.loss.lambda_seg_aux = 0.5
  c.loss.lambda_adv_main, c.loss.lambda_adv_aux = 5e-4, 2e-4
  c.loss.disc_real = "ensemble"
  c.loss.genmap_weights = True
  c.eval.aux_weight = 0.5
  return c


def _mrnet(c):
  """MRNet alone, with its own adversarial weights."""
  c.method = "mrnet"
  c.loss.lambda_adv_main = 1e-3
  c.loss.genmap_weights = c.loss.feature_disc = c.loss.dismap = False
  return c


def _genmap(threshold):
  def apply(c):
    c.loss.genmap_threshold = threshold
    c.loss.feature_disc = c.loss.dismap = False
    return c
  return apply


def _source_only(c):
  c.method = "source_only"
  c.loss.genmap_weights = False
  return c


def _coarse(c):
  c.loss.weight_grid = "disc"
  return c


def _toy(c):
  """The AdaptSegNet toy run (data, ResNet, optimiser, schedule, batch 4, no crop) with MRNet's decoders at width
  32 and the memory term from step 400 of 1200 (15k of MRNet's 25k would never start)."""
  c = config_base.toy(c)
  c.data.source_aug = config_base.augmentation()
  c.optim.lr, c.optim.nesterov, c.optim.warmup_steps, c.optim.weight_decay = 2.5e-3, True, 0, 5e-4
  c.optim.legacy_sgd = False  # the toy's optimiser, so that its rows compare schemes
  c.model.head_width, c.disc.feature_channels = 32, (32, 64, 128)
  c.loss.memreg_start = 400
  return c


PRESETS = {
    "mrnet": _mrnet, "genmap_t1": _genmap(1.0), "genmap": _genmap(0.9), "full": lambda c: c,
    "source_only": _source_only, "coarse": _coarse, "toy": _toy,
    "gta5": config_base.gta5, "synthia": config_base.synthia,
}


def get_config(arg: str | None = None):
  c = _base()
  names = config_base.preset_names(arg, PRESETS, "configs/pixel_weighted.py")
  if "toy" in names and "synthia" in names:
    raise UserError("configs/pixel_weighted.py: 'toy' is its own data and network; drop synthia")
  for n in sorted(names, key=lambda n: (n != "toy", n not in ("gta5", "synthia"))):
    c = PRESETS[n](c)
  return c


def _rows():
  t = rows.train
  r = []
  for table, pair, metric, published in (("1", "gta5", "mIoU", (36.6, 45.5, 47.2)),
                                         ("2", "synthia", "mIoU13", (38.6, 50.2, 50.9))):
    for name, presets, value in zip(("Source only", "MRNet", "Proposed"), ("source_only", "mrnet", "full"),
                                    published):
      r.append(rows.Row(table, name, value, (t(f"{pair},{presets}"),), metric))
  for name, presets, value in (("DA without pixel-wise weighting", "mrnet", 45.5),
                               ("Pixel-wise weighted DA (T = 1)", "genmap_t1", 46.5),
                               ("Pixel-wise weighted DA (T = 0.9)", "genmap", 46.8),
                               ("Pixel-wise weighted DA (refined w/ DisMap)", "full", 47.2)):
    r.append(rows.Row("3", name, value, (t(f"gta5,{presets}"),)))
  return tuple(r)


ROWS = _rows()
