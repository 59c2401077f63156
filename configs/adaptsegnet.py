r"""AdaptSegNet: "Learning to Adapt Structured Output Space for Semantic Segmentation" (Tsai et al., CVPR 2018).

Default (no preset): multi-level output-space adaptation, GTA5 -> Cityscapes, DeepLab-v2 ResNet-101, with the
official code's hyper-parameters (Table 1 "Ours (multi-level)": 42.4 mIoU, 19 classes, 150k iterations on one
12 GB GPU in the paper). Needs prepared gta5 / cityscapes_uda datasets and the DeepLab init weights:

  python -m uda_jax.tools.import_torch --arch deeplabv2_resnet101 \
      --input DeepLab_resnet_pretrained_init-f81d91e8.pth --output weights/deeplab_init
  python -m uda_jax.main --config configs/adaptsegnet.py --workdir runs/multi \
      --config.init_from=weights/deeplab_init

Presets (`configs/adaptsegnet.py:NAME`, combine with commas, e.g. `:toy,single_level`), paper rows:
  multi_level       Table 1 Ours (multi-level)   42.4   (the default)
  single_level      Table 1 Ours (single-level)  41.4   lambda_adv 1e-3, main head only
  feature           Table 1 Ours (feature)       39.3   single-level, D on layer4 features
  lsgan             Table 7 (Appendix A) LS-GAN  44.1   single-level, least-squares objective
  source_only       Table 1 Baseline (ResNet)    36.6   no adaptation
  oracle            train on the labelled target training split (Table 2 "Oracle": 65.1; VGG 61.8;
                    SYNTHIA Table 5: 71.7 / VGG 68.4 mIoU13)
  output_LAMBDA     Table 3 output-space sweep, LAMBDA in 0.0005 / 0.001 / 0.002 / 0.004 -> 40.2 / 41.4 / 40.4 / 40.1
  feature_LAMBDA    Table 3 feature-space sweep, same LAMBDAs -> 35.3 / 39.3 / 35.9 / 32.8
  vgg16             DeepLab-v2 VGG16, single-level: Table 1/2 VGG-16 Ours (single-level) 35.0 (oracle 61.8);
                    SYNTHIA (Table 4/5) 37.6 (13 classes). Init: import_torch --arch deeplabv2_vgg16 of
                    vgg16-00b39a1b.pth. Combine with source_only / oracle for the VGG baseline and oracle rows.
  resnet101_tv      torchvision-layout ResNet-101 backbone (import_torch --arch deeplabv2_resnet101_tv)
  official_lr       the official optimizer as run: each backbone tensor stepped once per module that lists it
                    (stem 1x, bottleneck convs 3x, downsample 4x) by PyTorch <= 1.4 SGD (optim.legacy_sgd)
  synthia           SYNTHIA -> Cityscapes: 16-class table with mIoU (16) and mIoU13 (Table 4's 13-class mIoU:
                    baseline 38.6, feature 40.8, single-level 45.9, multi-level 46.7; Table 8 single-level /
                    lsgan 39.5 / 40.8 mIoU, 45.9 / 47.6 mIoU13; checkpoints are ranked by the 16-class mIoU)
  synscapes         Synscapes -> Cityscapes (Table 9, with source_only: 45.3; single_level: 52.7 vanilla;
                    lsgan: 53.1)
  gta5              GTA5 -> Cityscapes (the default pair)
  crosscity_CITY    Cityscapes -> Cross-City CITY in rome / rio / tokyo / taipei (Table 6), lambda_adv 5e-4;
                    multi-level 53.8 / 51.6 / 49.9 / 49.1, source_only 50.9 / 48.2 / 47.7 / 46.5, feature
                    (preset before the city's, so lambda 5e-4 holds) 51.4 / 49.7 / 48.0 / 46.6
  multiscale_flip   test at scales 0.7 / 1.0 / 1.3 plus flips (FADA's multi_scale_inference), any method
  genmap            GenMap pixel weights (pixel-wise weighted DA, T 0.9, mu 0.1) on every target adversarial
                    term, both levels; no paper row (combine freely, e.g. `:lsgan,genmap`)
  fada_adv_aug      FADA's source input: colour jitter + class-balanced sampling (docs/datasets.md)
  fada_sd_aug       FADA's self-distillation input: random scale 0.5-1.5 of the native image, 512x1024 crop,
                    flip, jitter, applied to the labelled (source) stream
  toy               the embedded toy domain pair and a small ResNet; runs on a 2-core CPU:
    python -m uda_jax.main --config configs/adaptsegnet.py:toy --workdir runs/toy
  Toy results (2-core CPU, 1200 steps, ~5 min; mean +- std over seeds 0-2): see README.md "Toy benchmark".

Every paper row (Tables 1-9), with its published mIoU and the commands that reproduce it (ROWS below):
  python -m uda_jax.tools.tables configs/adaptsegnet.py [--table N] [--run ROOT | --collect ROOT]

Where paper and official code differ, the default follows the code (it produced the published numbers):
  2-branch ASPP (model.aspp_branches=4 is the paper's), BatchNorm with per-batch statistics in training
  (model.bn_mode='frozen' is the alternative), no Nesterov (optim.nesterov=True is the paper's), weight decay
  5e-4 (paper: 1e-4), discriminator without its final upsampling, source label 0 / target label 1.
"""

from uda_jax import config_base, rows

SWEEP = ("0.0005", "0.001", "0.002", "0.004")


def _single_level(c):
  c.model.multi_level = False
  c.loss.lambda_adv_main = 1e-3
  return c


def _feature(c):
  c = _single_level(c)
  c.disc.input = "features"
  return c


def _lsgan(c):
  c = _single_level(c)
  c.loss.gan = "ls"
  return c


def _source_only(c):
  c.method = "source_only"
  return c


def _oracle(c):
  c = _source_only(c)
  c.data.source, c.data.source_split = c.data.target, c.data.target_split
  c.data.source_label_map = c.data.eval_label_map
  c.data.source_size = c.data.target_size
  return c


def _vgg16(c):
  """DeepLab-v2 VGG16, single-level (the paper's VGG rows). The official model trains every layer at one lr."""
  c = _single_level(c)
  c.model.arch = "deeplabv2_vgg16"
  c.optim.head_modules = ("classifier",)
  c.optim.head_lr_mult = 1.0
  return c


def _crosscity_lambda(c):
  c.loss.lambda_adv_main = c.loss.lambda_adv_aux = 5e-4  # Sec. 6.3: smaller gap, smaller adversarial weight
  return c


def _resnet101_tv(c):
  """torchvision-layout ResNet-101 (ImageNet resnet101-5d3b4d8f.pth, as FADA uses it): frozen BN without eps,
  the 4-branch ASPP, ImageNet normalisation."""
  c.model.layout, c.model.bn_mode, c.model.bn_eps, c.model.aspp_branches = "torchvision", "frozen", 0.0, 4
  c.data.normalization = "imagenet"
  return c


def _official_lr(c):
  c.optim.legacy_sgd = True
  return c


def _sweep(space, value):
  def apply(c):
    c = _feature(c) if space == "feature" else _single_level(c)
    c.loss.lambda_adv_main = float(value)
    return c
  return apply


PRESETS = {
    "multi_level": lambda c: c,
    "single_level": _single_level,
    "feature": _feature,
    "lsgan": _lsgan,
    "source_only": _source_only,
    "oracle": _oracle,
    "official_lr": _official_lr,
    "vgg16": _vgg16,
    "resnet101_tv": _resnet101_tv,
    "toy": config_base.toy,
    **config_base.DATASET_PRESETS,
    **config_base.EVAL_PRESETS,
    **config_base.COMBINATION_PRESETS,
    **config_base.AUGMENT_PRESETS,
    **{f"{space}_{v}": _sweep(space, v) for space in ("output", "feature") for v in SWEEP},
}


def get_config(arg: str | None = None):
  c = config_base.base_config()
  names = config_base.preset_names(arg, PRESETS, "configs/adaptsegnet.py")
  # 'toy' first, so paper presets then apply on top of the toy data and network; input augmentations after the
  # dataset presets, whose sizes they replace; 'oracle' last, as it copies data fields.
  order = lambda n: (n != "toy", n in config_base.AUGMENT_PRESETS, n == "oracle")
  for n in sorted(names, key=order):
    c = PRESETS[n](c)
    if n.startswith("crosscity_"):
      c = _crosscity_lambda(c)
  return c


def _rows():
  """Every paper row these presets reproduce, with the published number (`python -m uda_jax.tools.tables`).
  Table 3's lambda 0.001 columns and Table 7's vanilla GAN are the single_level / feature runs of Table 1."""
  t = rows.train
  single, feature = t("single_level"), t("feature")
  r = [rows.Row("1", "Baseline (ResNet)", 36.6, (t("source_only"),)),
       rows.Row("1", "Ours (feature)", 39.3, (feature,)),
       rows.Row("1", "Ours (single-level)", 41.4, (single,)),
       rows.Row("1", "Ours (multi-level)", 42.4, (t("multi_level"),)),
       rows.Row("1", "VGG-16 Ours (single-level)", 35.0, (t("vgg16"),)),
       rows.Row("2", "Oracle (ResNet-101)", 65.1, (t("oracle"),)),
       rows.Row("2", "Oracle (VGG-16)", 61.8, (t("vgg16,oracle"),))]
  for space, published in (("output", (40.2, 41.4, 40.4, 40.1)), ("feature", (35.3, 39.3, 35.9, 32.8))):
    for value, mIoU in zip(SWEEP, published):
      stage = (single if space == "output" else feature) if value == "0.001" else t(f"{space}_{value}")
      r.append(rows.Row("3", f"{'Output Space' if space == 'output' else 'Feature'} lambda_adv={value}", mIoU,
                        (stage,)))
  synthia = lambda name, mIoU13, presets: rows.Row("4", name, mIoU13, (t(presets),), "mIoU13")
  r += [synthia("VGG-16 Ours (single-level)", 37.6, "synthia,vgg16"),
        synthia("Baseline (ResNet)", 38.6, "synthia,source_only"),
        synthia("Ours (feature)", 40.8, "synthia,feature"),
        synthia("Ours (single-level)", 45.9, "synthia,single_level"),
        synthia("Ours (multi-level)", 46.7, "synthia,multi_level"),
        rows.Row("5", "Oracle (ResNet-101)", 71.7, (t("synthia,oracle"),), "mIoU13"),
        rows.Row("5", "Oracle (VGG-16)", 68.4, (t("synthia,vgg16,oracle"),), "mIoU13")]
  # Table 6 (mIoU over 13 classes): Our Baseline / Ours (feature) / Ours (output space, multi-level). The
  # city preset goes last so its lambda_adv 5e-4 (Sec. 6.3: "when training our models") also holds for feature.
  for city, published in (("rome", (50.9, 51.4, 53.8)), ("rio", (48.2, 49.7, 51.6)),
                          ("tokyo", (47.7, 48.0, 49.9)), ("taipei", (46.5, 46.6, 49.1))):
    for name, presets, mIoU in zip(("Our Baseline", "Ours (feature)", "Ours (output space)"),
                                   ("source_only", "feature", "multi_level"), published):
      r.append(rows.Row("6", f"{city.capitalize()} {name}", mIoU, (t(f"{presets},crosscity_{city}"),)))
  r += [rows.Row("7", "Vanilla-GAN", 41.4, (single,)),
        rows.Row("7", "LS-GAN", 44.1, (t("lsgan"),)),
        rows.Row("8", "Vanilla-GAN", 39.5, (t("synthia,single_level"),)),
        rows.Row("8", "Vanilla-GAN", 45.9, (t("synthia,single_level"),), "mIoU13"),
        rows.Row("8", "LS-GAN", 40.8, (t("synthia,lsgan"),)),
        rows.Row("8", "LS-GAN", 47.6, (t("synthia,lsgan"),), "mIoU13"),
        rows.Row("9", "Without Adaptation", 45.3, (t("synscapes,source_only"),)),
        rows.Row("9", "Vanilla-GAN", 52.7, (t("synscapes,single_level"),)),
        rows.Row("9", "LS-GAN", 53.1, (t("synscapes,lsgan"),))]
  return tuple(r)


ROWS = _rows()
