r"""LSD-seg: "Learning from Synthetic Data: Addressing Domain Shift for Semantic Segmentation" (Sankaranarayanan et
al., CVPR 2018), as swamiviv/LSD-seg runs it (code/train.py, torchfcn/trainer_LSD.py).

Default (no preset): the full method, SYNTHIA -> Cityscapes on the 16 shared classes, FCN-8s VGG16 at 640x320,
the official train.py setting: 34.5 mIoU (Table 3 / Table 4 "Ours").

  python -m uda_jax.tools.import_torch --arch fcn8s_vgg16 --num_classes 16 \
      --input vgg16_from_caffe.pth --output weights/fcn8s_vgg16_16
  python -m uda_jax.main --config configs/lsdseg.py --workdir runs/lsdseg \
      --config.init_from=weights/fcn8s_vgg16_16
  python -m uda_jax.main --config configs/lsdseg.py:gta5,size1024 --workdir runs/lsdseg_gta5 \
      --config.init_from=weights/fcn8s_vgg16_19        # --num_classes 19 import

Presets (combine with commas):
  pairs      synthia (default; 16 classes) | gta5 (19 classes; GTA5 resized to 1280 wide, as the official loader)
  sizes      size512 (512x256) | size640 (640x320, default) | size1024 (1024x512): crop, D input and eval size
  Table 4    source_only | feature_d (a 1x1-conv D on fc7, no G) | no_patch (one 4-way output per image) |
             no_aux (alpha = 0: D without its labelling head) | full (the default)
  camvid     evaluate on CamVid (Table 5; `python -m uda_jax.data.prepare camvid/segnet --manual_dir DIR`):
    python -m uda_jax.main --config configs/lsdseg.py:size1024,camvid --workdir runs/lsdseg_1024 --mode=eval
  toy        the embedded toy pair through the same code (README "Toy benchmark"):
    python -m uda_jax.main --config configs/lsdseg.py:toy --workdir runs/toy_lsdseg

Every paper row with its published mIoU and commands: python -m uda_jax.tools.tables configs/lsdseg.py [--table N]
  Table 2a SYNTHIA (16 classes, 1024x512): source only 26.8, ours 36.1;  2b GTA5 (19): source only 29.6, ours 37.1
  Table 3 SYNTHIA, 512x256 / 640x320 / 1024x512: source only 21.5 / 23.2 / 26.8, ours 31.3 / 34.5 / 36.1
  Table 4 SYNTHIA 640x320: source only 22.2, feature space D 25.3, w/o patch D 28.3, alpha = 0 29.2, ours 34.5
  Table 5 CamVid (10 classes), the SYNTHIA 1024x512 models: source only 36.1, ours 44.4

As run (the paper says 1024x512 and lr 2e-4 for G and D; train.py uses 640x320 and 1e-4): batch 1 + 1; F Adam
lr 1e-5 (biases 2e-5), betas (0.9, 0.999), no weight decay, x0.1 every 8 epochs of min(|source|, |target|) =
2975 iterations; G and D Adam 1e-4, betas (0.7, 0.999), constant; 100k iterations. Input: random crops of the
crop size from full-resolution images, never resized (SYNTHIA 1280x760 at offsets randint(0, H - h); Cityscapes
2048x1024 with a 50 px margin: randint(0, H - h - 50)); Caffe BGR mean subtraction for F, [0, 1] BGR for D.
Evaluation: the whole Cityscapes image resized to the crop size (Lanczos), argmax, nearest upsampling to
2048x1024. Differences, each a switch: the official code trains a 19-way F on SYNTHIA (the paper and we: 16;
--config.model.num_classes=19 --config.data.source_label_map=synthia_ids_to_19 --config.eval.class_set=cityscapes19
--config.data.eval_label_map=cityscapes_ids_to_19 for the as-run head); D's labels are the official scrambled map
with --config.loss.aux_labels=official_transposed (methods/lsdseg.py); the official step applies the three
updates sequentially on one graph, we simultaneously (methods/lsdseg.py says why). GTA5: the official loader
retries crops that hold no labelled pixel; we do not.
"""

from uda_jax import config_base, rows
from uda_jax.data import labels
from uda_jax.errors import UserError

SIZES = {"size512": (256, 512), "size640": (320, 640), "size1024": (512, 1024)}


def _base():
  c = config_base.base_config()
  c.method = "lsdseg"
  c.model.arch, c.model.multi_level, c.model.num_classes = "fcn8s", False, 16
  c.disc.width = 128
  c.loss.ce_reduction = "sum"
  c.optim.segmenter, c.optim.lr, c.optim.bias_lr_mult, c.optim.b1, c.optim.b2 = "adam", 1e-5, 2.0, 0.9, 0.999
  c.optim.schedule, c.optim.step_every, c.optim.step_factor = "step", 8 * 2975, 0.1
  c.optim.d_schedule, c.optim.d_lr, c.optim.d_b1, c.optim.d_b2 = "constant", 1e-4, 0.7, 0.999
  c.train.num_steps = c.optim.decay_steps = 100_000
  c = config_base.synthia(c)
  c.data.source_size = c.data.target_size = None  # crops of the full-resolution images
  c.data.eval_resize, c.eval.upsample = "lanczos", "nearest"
  return _size((320, 640))(c)


def _size(hw):
  def apply(c):
    c.data.source_aug = config_base.augmentation(crop=hw, crop_margin=0)
    c.data.target_aug = config_base.augmentation(crop=hw, crop_margin=50)
    c.data.eval_size = hw
    return c
  return apply


def _gta5(c):
  c.data.source, c.data.source_label_map = "gta5", "cityscapes_ids_to_19"
  c.data.eval_label_map, c.eval.class_set, c.model.num_classes = "cityscapes_ids_to_19", "cityscapes19", 19
  c.data.source_size = (703, 1280)  # official: width 1280 at GTA5's aspect (1914x1052), Lanczos, then the crop
  return c


def _source_only(c):
  c.method = "source_only"
  return c


def _variant(**loss):
  def apply(c):
    c.loss.update(loss)
    return c
  return apply


def _camvid(c):
  """Table 5: evaluate on CamVid's test split (the SegNet copy, 233 images at 480x360, native size), over the 10
  classes CamVid shares with SYNTHIA and Cityscapes (labels.SUBSET_10_OF_16; no Bicyclist). The paper does not
  say which split or size; test at native size is our choice."""
  c.data.eval, c.data.eval_split = "camvid/segnet", "test"
  c.data.eval_label_map = f"camvid_segnet_ids_to_{c.model.num_classes}"
  c.data.eval_size = c.data.eval_label_size = None
  c.eval.class_subset = labels.SUBSET_10_OF_16 if c.model.num_classes == 16 else labels.SUBSET_10_OF_19
  return c


def _toy(c):
  """The toy pair at 64x128 (a multiple of 32, so G gives back its input) with a narrow FCN-8s trained from
  scratch (He-normal convs), G and D at 16 and 32 channels; Adam 1e-4 for F (from scratch, not fine-tuning),
  x0.1 at step 1000 of 1200; G and D at the paper's 1e-4; batch 4 + 4 (the summed losses are per image)."""
  c = config_base.toy(c)
  c.model.num_classes, c.eval.class_set = 19, "cityscapes19"  # the toy's labels are Cityscapes ids
  c.data.source_label_map = c.data.eval_label_map = "cityscapes_ids_to_19"
  c.model.width, c.model.fc_dim, c.model.random_init = 16, 256, True
  c.gen.width, c.disc.width = 16, 32
  c.optim.lr, c.optim.step_every = 1e-4, 1000
  c.data.source_size = c.data.target_size = None
  c.data.source_aug = config_base.augmentation()
  c.data.target_aug = config_base.augmentation()
  c.data.source_size = c.data.target_size = c.data.eval_size = (64, 128)
  c.data.eval_resize, c.eval.upsample = "bicubic", "bilinear"
  return c


PRESETS = {
    "synthia": lambda c: c, "gta5": _gta5, **{name: _size(hw) for name, hw in SIZES.items()},
    "source_only": _source_only, "feature_d": _variant(lsd_space="feature"), "no_patch": _variant(patch_disc=False),
    "no_aux": _variant(aux_head=False), "full": lambda c: c, "camvid": _camvid, "toy": _toy,
}


def get_config(arg: str | None = None):
  c = _base()
  names = config_base.preset_names(arg, PRESETS, "configs/lsdseg.py")
  if "toy" in names and any(n in ("gta5", *SIZES) for n in names):
    raise UserError("configs/lsdseg.py: 'toy' is its own data, size and network; drop gta5 / size*")
  for n in sorted(names, key=lambda n: (n != "toy", n not in ("synthia", "gta5"), n == "camvid")):
    c = PRESETS[n](c)
  return c


def _rows():
  t = rows.train
  r = []
  for table, pair, published in (("2a", "synthia", (26.8, 36.1)), ("2b", "gta5", (29.6, 37.1))):
    for name, presets, value in (("Ours - Source only", "source_only", published[0]),
                                 ("Ours - Adapted", "full", published[1])):
      r.append(rows.Row(table, name, value, (t(f"{pair},size1024,{presets}"),)))
  for size, src, ours in (("size512", 21.5, 31.3), ("size640", 23.2, 34.5), ("size1024", 26.8, 36.1)):
    h, w = SIZES[size]
    r += [rows.Row("3", f"{w}x{h} source only", src, (t(f"synthia,{size},source_only"),)),
          rows.Row("3", f"{w}x{h} ours", ours, (t(f"synthia,{size},full"),))]
  for name, presets, value in (("Source-only", "source_only", 22.2), ("Feature space based D", "feature_d", 25.3),
                               ("Ours w/o Patch Discriminator", "no_patch", 28.3),
                               ("Ours w/o auxiliary loss (alpha = 0)", "no_aux", 29.2), ("Ours", "full", 34.5)):
    r.append(rows.Row("4", name, value, (t(f"synthia,size640,{presets}"),)))
  for name, presets, value in (("Source-only", "source_only", 36.1), ("Ours", "full", 44.4)):
    trained = t(f"synthia,size1024,{presets}")
    r.append(rows.Row("5", name, value, (trained, rows.Stage("camvid", f"synthia,size1024,{presets},camvid", "eval",
                                                               workdir="{" + trained.key + "}"))))
  return tuple(r)


ROWS = _rows()
