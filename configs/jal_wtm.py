r"""JAL + WTM: "Joint Adversarial Learning for Domain Adaptation in Semantic Segmentation" (Zhang & Wang, AAAI 2020).

Default (no preset): the full method (Table 4 row 6: JAL + WTM on Dec1 and Dec2), GTA5 -> Cityscapes,
DeepLab-v2 ResNet-101 with ASPP decoders on conv4 (Dec1) and conv5 (Dec2), evaluated with the transferred
decoder DecT2: 43.5 mIoU (Table 1). There is no official code (zhyx12/JAL holds a README only); the scheme is
methods/jal_wtm.py, whose docstring lists what the paper leaves open and what we chose.

  python -m uda_jax.tools.import_torch --arch deeplabv2_resnet101 \
      --input DeepLab_resnet_pretrained_init-f81d91e8.pth --output weights/deeplab_init
  python -m uda_jax.main --config configs/jal_wtm.py --workdir runs/jal_wtm --config.init_from=weights/deeplab_init
  python -m uda_jax.main --config configs/jal_wtm.py:vgg16 --workdir runs/jal_wtm_vgg \
      --config.init_from=weights/vgg16_imagenet      # import_torch --arch deeplabv2_vgg16 of vgg16-00b39a1b.pth

Presets (combine with commas, e.g. `:synthia,vgg16,jal`):
  backbones  resnet101 (default) | vgg16 (multi-level DeepLab-v2 VGG16: Dec1 on conv5, Dec2 on fc7)
  pairs      gta5 (default) | synthia (16 classes; mIoU and mIoU13 from one evaluation)
  Table 4    baseline (two-level AdaptSegNet) | jal | wtm_dec1 | wtm_dec2 | wtm_both | full (the default)
  Table 3    (VGG16, on the baseline) aspp_disc | disc_n{2,3,4} | disc_width{2,4}; source_only (Tables 1-2)
  original_decoder  also evaluate Dec2 beside DecT2 (column 'Dec2 mIoU')
  genmap     GenMap pixel weights (pixel-wise weighted DA, T 0.9, mu 0.1) on every target adversarial term,
             JAL's and WTM's included; no paper row (e.g. `:jal,genmap`; loss.gan='ls' for LS-GAN)
  toy        the embedded toy pair through the same code (README "Toy benchmark"):
    python -m uda_jax.main --config configs/jal_wtm.py:toy --workdir runs/toy_jal_wtm

Every paper row (Tables 1-4) with its published mIoU and exact commands:
  python -m uda_jax.tools.tables configs/jal_wtm.py [--table N] [--run ROOT | --collect ROOT]
  Table 1 GTA5:    source only V 30.5 / R 36.8; Ours (DecT2) V 38.5 / R 43.5
  Table 2 SYNTHIA (mIoU / mIoU13): source only V 28.0 / 32.4, R 33.9 / 38.9; Ours V 36.2 / 42.2, R 41.6 / 48.3
  Table 3 VGG16 GTA5: baseline 35.0, ASPP discriminator 35.3, N = 2 / 3 / 4 discriminators 35.4 / 35.5 / 35.5,
          width 2 / 4 35.6 / 35.6, JAL 36.7
  Table 4 GTA5 VGG16 / ResNet-101: baseline 35.0 / 42.4, JAL 36.7 / 41.5, WTM on Dec1 35.9 / 42.6, on Dec2
          36.1 / 42.7, on both 36.4 / 42.9, JAL + WTM on both 38.5 / 43.5

As the paper states ("Experimental details"): SGD lr 2.5e-4, momentum 0.9, weight decay 1e-4 for the segmenter
(heads at 10x on ResNet as DeepLab; VGG16 at one lr, as AdaptSegNet's VGG model); Adam 1e-4 for D1, D2 and
Dwtm; SGD 1e-4, momentum 0.9, no weight decay for the WTMs; poly over 250k stopping at 150k; lambda_seg 0.1 / 1,
lambda_adv 2e-4 / 1e-3, lambda_adv_wtm 2e-4 / 1e-3; the five-conv discriminator, LeakyReLU 0.2; four ASPP
branches summed ("the ASPP decoder contains four convolution kernels"; AdaptSegNet's code sums two:
--config.model.aspp_branches=2). "All images are resized and cropped to 1024x512": GTA5 resized to 1280x720
(SYNTHIA 1280x760) then randomly cropped to 1024x512, Cityscapes resized to 1024x512. Not stated, so taken
from AdaptSegNet: batch 1 + 1, D Adam betas (0.9, 0.99), BatchNorm with batch statistics, the DeepLab init;
the JAL weight lambda_jal = lambda^2_adv = 1e-3. Table 3/4's baseline rows are two-level AdaptSegNet in this
setting; the paper prints AdaptSegNet's published numbers there (35.0 is its single-level VGG16 result).
"""

from uda_jax import config_base, rows
from uda_jax.errors import UserError


def _base():
  c = config_base.base_config()
  c.method = "jal_wtm"
  c.model.multi_level, c.model.aspp_branches = True, 4
  c.optim.weight_decay = 1e-4
  c.loss.jal, c.loss.wtm_levels = True, ("aux", "main")
  c.data.source_aug = config_base.augmentation(crop=(512, 1024))
  return c


def _vgg16(c):
  c.model.arch = "deeplabv2_vgg16"
  c.data.normalization = "vgg_bgr"
  c.optim.head_modules, c.optim.head_lr_mult = ("classifier", "classifier_aux"), 1.0
  return c


def _components(jal, wtm_levels):
  def apply(c):
    c.loss.jal, c.loss.wtm_levels = jal, tuple(wtm_levels)
    return c
  return apply


def _source_only(c):
  c.method = "source_only"
  c.loss.jal, c.loss.wtm_levels = False, ()
  return c


def _disc(**fields):
  def apply(c):
    c = _components(False, ())(c)  # Table 3 varies the baseline's discriminator
    c.disc.update(fields)
    return c
  return apply


def _original_decoder(c):
  c.eval.original_decoder = True
  return c


def _toy(c):
  """AdaptSegNet's toy run (network, optimiser, schedule, no crop) with JAL + WTM: `:toy,baseline` is exactly
  `configs/adaptsegnet.py:toy`, so the README rows compare the schemes alone. The toy's segmenter lr is 10x
  the paper's; the WTMs' lr is scaled alike (1e-3)."""
  c = config_base.toy(c)
  c.model.aspp_branches, c.optim.weight_decay, c.optim.wtm_lr = 2, 5e-4, 1e-3
  c.data.source_aug = config_base.augmentation()
  return c


COMPONENTS = {"baseline": (False, ()), "jal": (True, ()), "wtm_dec1": (False, ("aux",)),
              "wtm_dec2": (False, ("main",)), "wtm_both": (False, ("aux", "main")), "full": (True, ("aux", "main"))}
DISC_VARIANTS = {"aspp_disc": dict(front="aspp"), **{f"disc_n{n}": dict(count=n) for n in (2, 3, 4)},
                 **{f"disc_width{w}": dict(width_mult=w) for w in (2, 4)}}
PRESETS = {
    "resnet101": lambda c: c, "vgg16": _vgg16,
    **{name: _components(*v) for name, v in COMPONENTS.items()},
    **{name: _disc(**v) for name, v in DISC_VARIANTS.items()},
    "source_only": _source_only, "original_decoder": _original_decoder, "toy": _toy,
    "gta5": config_base.gta5, "synthia": config_base.synthia, **config_base.COMBINATION_PRESETS,
}


def get_config(arg: str | None = None):
  c = _base()
  names = config_base.preset_names(arg, PRESETS, "configs/jal_wtm.py")
  if names.count("toy") and any(n in ("gta5", "synthia", "vgg16") for n in names):
    raise UserError("configs/jal_wtm.py: 'toy' is its own data and network; drop gta5 / synthia / vgg16")
  for n in sorted(names, key=lambda n: (n != "toy", n not in ("resnet101", "vgg16"), n not in ("gta5", "synthia"))):
    c = PRESETS[n](c)
  if "synthia" in names and "toy" not in names:
    c.data.source_size = (760, 1280)  # then the 512x1024 crop, as for GTA5
  return c


def _rows():
  t = rows.train
  r = []
  for pair, table, published in (("gta5", "1", ((30.5,), (38.5,), (36.8,), (43.5,))),
                                 ("synthia", "2", ((28.0, 32.4), (36.2, 42.2), (33.9, 38.9), (41.6, 48.3)))):
    for i, (backbone, b) in enumerate((("vgg16", "V"), ("resnet101", "R"))):
      for name, presets, values in (("Source Only", "source_only", published[2 * i]),
                                    ("Ours(DecT2)", "full", published[2 * i + 1])):
        stage = t(f"{pair},{backbone},{presets}")
        r += [rows.Row(table, f"{name} {b}", v, (stage,), metric) for v, metric in zip(values, ("mIoU", "mIoU13"))]
  for name, presets, published in (("Baseline width=1", "baseline", 35.0), ("ASPP Discriminator", "aspp_disc", 35.3),
                                   ("Multi Discriminator N=2", "disc_n2", 35.4),
                                   ("Multi Discriminator N=3", "disc_n3", 35.5),
                                   ("Multi Discriminator N=4", "disc_n4", 35.5),
                                   ("Wider Discriminator width=2", "disc_width2", 35.6),
                                   ("Wider Discriminator width=4", "disc_width4", 35.6), ("JAL", "jal", 36.7)):
    r.append(rows.Row("3", name, published, (t(f"gta5,vgg16,{presets}"),)))
  for k, (presets, vgg, res) in enumerate((("baseline", 35.0, 42.4), ("jal", 36.7, 41.5), ("wtm_dec1", 35.9, 42.6),
                                           ("wtm_dec2", 36.1, 42.7), ("wtm_both", 36.4, 42.9),
                                           ("full", 38.5, 43.5)), start=1):
    r += [rows.Row("4", f"row {k} ({presets}) VGG16", vgg, (t(f"gta5,vgg16,{presets}"),)),
          rows.Row("4", f"row {k} ({presets}) Res101", res, (t(f"gta5,resnet101,{presets}"),))]
  return tuple(r)


ROWS = _rows()
