r"""FADA: "Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic Segmentation" (Wang et al.,
ECCV 2020), as the official JDAI-CV/FADA code runs it. Three stages, each a preset, chained by checkpoints:

  src  source only: class-balanced GTA5 / SYNTHIA, lr 5e-4, poly over 31.25k stopping at 20k, batch 8
  adv  fine-grained adversarial (the default): continues the src run (init_from), soft domain encodings (T 1.8,
       clipped at 0.9), lambda_adv 1e-3, source colour jitter + class balancing, lr 2.5e-4 (classifier 10x),
       D Adam 1e-4 (0.9, 0.99), poly over 62.5k stopping at 40k, 4 source + 4 target images
  sd   self-distillation: a fresh ImageNet-initialised model trained on the adv model's hard pseudo-labels of
       the target training split (--mode=predict writes them), SyncBN trained (GTA5; frozen for SYNTHIA as
       run), random scale 0.5-1.5 + 512x1024 crop + flip + jitter, lr 5e-4, batch 8, tested at 1024x2048

GTA5 -> Cityscapes with ResNet-101, the whole recipe (or `bash launch/fada_gta5.sh runs/fada`, restartable):

  python -m uda_jax.tools.import_torch --arch deeplabv2_resnet101_tv --input resnet101-5d3b4d8f.pth \
      --output weights/resnet101_imagenet
  python -m uda_jax.main --config configs/fada.py:src --workdir runs/fada/src \
      --config.init_from=weights/resnet101_imagenet                                         # Table 4 "Source only"
  python -m uda_jax.main --config configs/fada.py:adv --workdir runs/fada/adv \
      --config.init_from=runs/fada/src                                                      # 46.9 (Table 3/4)
  python -m uda_jax.main --config configs/fada.py:adv --workdir runs/fada/adv --mode=predict \
      --config.predict.output_dir=runs/fada/pseudo                                          # pseudo-labels
  python -m uda_jax.main --config configs/fada.py:sd --workdir runs/fada/sd \
      --config.init_from=weights/resnet101_imagenet --config.data.source=runs/fada/pseudo    # 49.2 (+SD)
  python -m uda_jax.main --config configs/fada.py:sd,multiscale_flip --workdir runs/fada/sd --mode=eval \
      --config.eval.checkpoint=latest                                                       # 50.1 (+MST)

An official FADA checkpoint (model_iter020000.pth of train_src.py, with or without model_D) can start `adv`
directly: import it with `import_torch --arch deeplabv2_resnet101_tv` and pass that directory as init_from.

Paper rows (ROWS below; published mIoU; each row's exact commands: `python -m uda_jax.tools.tables configs/fada.py
--table N`; rows marked FADA run src -> adv -> pseudo-labels -> sd):
  Table 1 Cityscapes -> Cross-City, FADA, `crosscity_CITY`: Rome 54.7, Rio 54.7, Tokyo 51.3, Taipei 52.7
  Table 2 SYNTHIA (mIoU / mIoU*), `synthia,BACKBONE`: VGG-16 source only (src) 25.6 / 29.6, feat. only (adv,binary)
          31.0 / 36.2, FADA 39.5 / 46.0; ResNet-101 source only 33.5 / 38.6, feat. only 35.4 / 40.8, FADA 45.2 / 52.5
  Table 3 GTA5, `gta5,BACKBONE`: VGG-16 source only 28.3, feat. only 34.1, FADA 43.8; ResNet-101 source only 36.8,
          feat. only 39.3, FADA 49.2, FADA-MST (sd,multiscale_flip, --mode=eval) 50.1
  Table 4 GTA5 ResNet-101: source only 36.8, F-Adv (adv) 46.9, +SD (sd) 49.2, +MST 50.1
  Table 5 adv stage, ResNet-101, GTA5 / SYNTHIA: baseline (binary) 39.4 / 35.4, hard 45.7 / 40.8, soft 46.9 / 41.5
  Table 6 adv stage, GTA5 ResNet-101, clip_0.7 / 0.8 / 0.9 / 1.0: 46.2 / 46.3 / 46.9 / 45.7

Presets (combine with commas, e.g. `:synthia,vgg16,adv`): stages src / adv / sd; backbones resnet101 (default)
/ vgg16; pairs gta5 (default) / synthia / crosscity_{rome,rio,tokyo,taipei}; ablations hard (Table 5 hard
labels), binary (Table 4/5 feature-level baseline with a binary domain discriminator), clip_{0.7,0.8,0.9,1.0}
(Table 6); multiscale_flip (MST); genmap (adv: GenMap pixel weights of the pixel-wise weighted paper, T 0.9,
mu 0.1, on the fine-grained adversarial terms, `:adv,genmap`; no paper row); toy. Every paper row is listed
with its published mIoU and commands by
  python -m uda_jax.tools.tables configs/fada.py [--table N] [--run ROOT | --collect ROOT]

Where paper and official code differ, the default follows the code: segmentation CE on logits / T
(loss.seg_on_scaled_logits=False: eq. 3), weight decay 5e-4 also on biases (paper 1e-4), hard (argmax)
pseudo-labels without threshold for self-distillation, single-scale test, FrozenBatchNorm without eps in src /
adv, the classifier's four ASPP branches summed. Class-balanced sampling regenerates each 3000-draw sub-epoch
from (seed, k) rather than from the sampler state (docs/datasets.md). Hard encodings (Table 5) take the
confidence from softmax(z / T), the distribution the adversarial stage trains, and average over kept pixels.

Toy (2-core CPU, ~5 min a stage): `:toy,src` then `:toy,adv` with init_from the src run; README "Toy benchmark".
"""

from uda_jax import config_base
from uda_jax.errors import UserError
from uda_jax.rows import Row, Stage, train

STAGES = ("src", "adv", "sd")


def _resnet101(c):
  """torchvision ResNet-101 (resnet101-5d3b4d8f.pth), FrozenBatchNorm without eps, 4-branch ASPP."""
  c.model.layout, c.model.bn_mode, c.model.bn_eps, c.model.aspp_branches = "torchvision", "frozen", 0.0, 4
  c.model.multi_level = False
  c.data.normalization = "imagenet"
  c.optim.head_modules = ("layer6",)
  return c


def _vgg16(c):
  """DeepLab-v2 VGG16 (vgg16-00b39a1b.pth, BGR 0-255 minus the VGG mean), fc7 (1024) feeds the discriminator."""
  c.model.arch, c.model.multi_level, c.model.aspp_branches = "deeplabv2_vgg16", False, 4
  c.data.normalization = "vgg_bgr"
  c.optim.head_modules = ("classifier",)
  return c


def _common(c):
  c.optim.head_lr_mult = 10.0  # separate SGD for the classifier at 10x lr, as run
  c.optim.weight_decay = 5e-4
  c.train.log_every = 20
  c.train.eval_every = c.train.checkpoint_every = 2000  # official CHECKPOINT_PERIOD
  c.eval.checkpoint = "latest"  # the official recipe uses the last iteration, not a target-selected one
  return c


def _schedule(c, lr, decay, stop, batch):
  c.optim.lr, c.optim.decay_steps, c.train.num_steps, c.data.batch_size = lr, decay, stop, batch
  return c


def _src(c):
  c.method = "source_only"
  c.data.class_balanced = True
  return _schedule(c, 5e-4, 31_250, 20_000, 8)


def _adv(c):
  c.method = "fada"
  c.disc.arch = "pixel"
  c.loss.lambda_adv_main = 1e-3
  c = config_base.fada_adversarial_aug(c)
  c.init_from_required = ("the adversarial stage continues a source-only run: pass --config.init_from=WORKDIR of "
                          "`configs/fada.py:src` (or an imported FADA source-only checkpoint)")
  return _schedule(c, 2.5e-4, 62_500, 40_000, 4)


def _sd(c):
  c.method = "source_only"
  c.data.source, c.data.source_split, c.data.source_label_map = "", "train", "identity"  # pseudo-labels: train ids
  c.data.class_balanced = False
  c = config_base.fada_self_distill_aug(c)
  if c.model.num_classes == 19:  # GTA5: SyncBN, trained; SYNTHIA's self-distillation config keeps BN frozen
    c.model.bn_mode, c.model.bn_eps, c.optim.train_bn = "sync", 1e-5, True
  c.data.eval_size = (1024, 2048)  # INPUT_SIZE_TEST of the self-distillation configs
  return _schedule(c, 5e-4, 31_250, 20_000, 8)


def _toy(c):
  """The toy pair with AdaptSegNet's toy network (Caffe layout, 2-branch ASPP, batch-statistics BatchNorm: it
  trains from scratch, where frozen BN would not normalise at all), single-level as FADA's classifier, so the
  README's toy rows compare schemes rather than backbones. Stage lengths: 1200 steps each."""
  c = config_base.toy(c)
  c.model.layout, c.model.aspp_branches, c.data.normalization = "caffe", 2, "caffe_bgr"
  c.model.bn_mode, c.model.bn_eps = "batch_stats", 1e-5
  c.data.eval_size = c.data.source_size
  c.disc.width = 64
  return c


def _toy_stage(c):
  """After a stage preset on the toy: the toy's batch, schedule and evaluation cadence."""
  c.data.batch_size = 4
  c.optim.lr, c.optim.decay_steps = 2.5e-3, 1200
  c.train.num_steps, c.train.log_every = 1200, 50
  c.train.eval_every = c.train.checkpoint_every = 400
  c.data.eval_size = (64, 128)
  if c.data.source_aug.crop:
    c.data.source_aug.crop = (64, 128)
  return c


def _encoding(kind):
  def apply(c):
    c.loss.encoding = kind
    return c
  return apply


def _clip(value):
  def apply(c):
    c.loss.confidence = float(value)
    return c
  return apply


CLIPS = ("0.7", "0.8", "0.9", "1.0")
PRESETS = {
    "src": _src, "adv": _adv, "sd": _sd,
    "resnet101": lambda c: c, "vgg16": _vgg16,
    "hard": _encoding("hard"), "binary": _encoding("binary"), "soft": _encoding("soft"),
    **{f"clip_{v}": _clip(v) for v in CLIPS},
    "toy": _toy,
    **config_base.DATASET_PRESETS,
    **config_base.EVAL_PRESETS,
    **config_base.COMBINATION_PRESETS,
}


def get_config(arg: str | None = None):
  c = _common(_resnet101(config_base.base_config()))
  names = config_base.preset_names(arg, PRESETS, "configs/fada.py")
  if len([n for n in names if n in STAGES]) > 1:
    raise UserError(f"configs/fada.py: name one stage of {', '.join(STAGES)}, not {arg!r}")
  if not any(n in STAGES for n in names):
    names.append("adv")
  # Backbone and toy first, then the dataset, then the stage (it reads num_classes), then the ablations.
  order = lambda n: (n != "toy", n != "vgg16", n in STAGES or n not in config_base.DATASET_PRESETS, n not in STAGES)
  for n in sorted(names, key=order):
    c = PRESETS[n](c)
  if "toy" in names:
    c = _toy_stage(c)
  return c


def _chain(pair, backbone, extra="", upto="sd"):
  """The stages of one FADA row: src -> adv (from src) [-> pseudo-labels -> sd (on them) [-> MST eval]]."""
  base = f"{pair},{backbone}"
  stages = [train(f"{base},src")]
  if upto == "src":
    return tuple(stages)
  stages.append(Stage("adv", f"{base},adv{extra}", overrides=(("init_from", "{src}"),)))
  if upto == "adv":
    return tuple(stages)
  stages += [Stage("pseudo", f"{base},adv{extra}", "predict", (("predict.output_dir", "{pseudo}"),), workdir="{adv}"),
             Stage("sd", f"{base},sd", overrides=(("data.source", "{pseudo}"),))]
  if upto == "mst":
    stages.append(Stage("mst", f"{base},sd,multiscale_flip", "eval", workdir="{sd}"))
  return tuple(stages)


def _rows():
  """Tables 1-6. Tables 1-3 "FADA" is the whole recipe (F-Adv + SD; Table 3 ResNet also with MST); "Baseline
  (feat. only)" is the adversarial stage with a binary domain discriminator on the features. Start src and sd
  from ImageNet weights: `tables ... --run ROOT -- --config.init_from=weights/resnet101_imagenet` (adv keeps
  init_from={src})."""
  rows = []
  for city, fada in (("rome", 54.7), ("rio", 54.7), ("tokyo", 51.3), ("taipei", 52.7)):
    rows.append(Row("1", f"{city.capitalize()}: FADA", fada, _chain(f"crosscity_{city}", "resnet101"),
                    note="the paper does not say which stages; the whole recipe of Tables 2-3 is assumed"))
  for backbone, values in (("vgg16", ((25.6, 29.6), (31.0, 36.2), (39.5, 46.0))),
                           ("resnet101", ((33.5, 38.6), (35.4, 40.8), (45.2, 52.5)))):
    (src16, src13), (feat16, feat13), (fada16, fada13) = values
    for name, (v16, v13), stages in (
        ("Source only", (src16, src13), _chain("synthia", backbone, upto="src")),
        ("Baseline (feat. only)", (feat16, feat13), _chain("synthia", backbone, ",binary", upto="adv")),
        ("FADA", (fada16, fada13), _chain("synthia", backbone))):
      label = f"{'VGG-16' if backbone == 'vgg16' else 'ResNet-101'} {name}"
      rows += [Row("2", label, v16, stages), Row("2", label, v13, stages, metric="mIoU13")]
  rows += [Row("3", "VGG-16 Source only", 28.3, _chain("gta5", "vgg16", upto="src")),
           Row("3", "VGG-16 Baseline (feat. only)", 34.1, _chain("gta5", "vgg16", ",binary", upto="adv")),
           Row("3", "VGG-16 FADA", 43.8, _chain("gta5", "vgg16")),
           Row("3", "ResNet-101 Source only", 36.8, _chain("gta5", "resnet101", upto="src")),
           Row("3", "ResNet-101 Baseline (feat. only)", 39.3, _chain("gta5", "resnet101", ",binary", upto="adv")),
           Row("3", "ResNet-101 FADA", 49.2, _chain("gta5", "resnet101")),
           Row("3", "ResNet-101 FADA-MST", 50.1, _chain("gta5", "resnet101", upto="mst"))]
  rows += [Row("4", name, value, _chain("gta5", "resnet101", upto=upto)) for name, value, upto in (
      ("Source only", 36.8, "src"), ("F-Adv", 46.9, "adv"), ("F-Adv + SD", 49.2, "sd"),
      ("F-Adv + SD + MST", 50.1, "mst"))]
  for pair, values in (("gta5", (39.4, 45.7, 46.9)), ("synthia", (35.4, 40.8, 41.5))):
    for (name, extra), value in zip((("baseline", ",binary"), ("hard labels", ",hard"), ("soft labels", "")), values):
      rows.append(Row("5", f"{pair.upper()}: {name}", value, _chain(pair, "resnet101", extra, upto="adv")))
  for clip, value in zip(CLIPS, (46.2, 46.3, 46.9, 45.7)):
    extra = "" if clip == "0.9" else f",clip_{clip}"
    rows.append(Row("6", f"threshold {clip}", value, _chain("gta5", "resnet101", extra, upto="adv")))
  return tuple(rows)


ROWS: tuple[Row, ...] = _rows()
