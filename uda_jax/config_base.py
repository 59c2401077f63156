"""The config every method config starts from: AdaptSegNet's official GTA5 -> Cityscapes multi-level setting.

Method configs in configs/ override what differs and add presets. Field meanings are in the comments.
"""

import ml_collections

from uda_jax.errors import UserError

# Train ids of the toy pair's 11 classes (road ... car) in the Cityscapes convention.
TOY_CLASSES = (0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 13)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "adaptsegnet"  # source_only | adaptsegnet | fada | jal_wtm | mrnet | pixel_weighted | lsdseg
  c.seed = 0
  # Directory written by `python -m uda_jax.tools.import_torch` (pretrained weights), or the workdir of an earlier
  # stage's run (its latest checkpoint: segmenter and same-named discriminators; optimizers and step restart).
  c.init_from = ""
  c.init_from_required = ""  # stages that continue another one set this to the error shown without init_from

  c.model = ml_collections.ConfigDict()
  c.model.arch = "deeplabv2_resnet"  # deeplabv2_resnet | deeplabv2_vgg16 | fcn8s (LSD-seg's F)
  c.model.fc_dim = 4096  # fcn8s: channels of fc6 / fc7
  c.model.fc_dropout = 0.5  # fcn8s: Dropout2d after fc6 and fc7
  c.model.random_init = False  # fcn8s: He-normal convs to train from scratch (the toy); official: zeros + VGG16
  c.model.depth = 101
  c.model.blocks = ()  # per-layer block counts; empty = from depth (101: 3, 4, 23, 3)
  c.model.width = 64  # channels of the stem; layer i has width * 2**i * 4 outputs (fcn8s: VGG16 stages x width/64)
  c.model.layout = "caffe"  # caffe (DeepLab-v2, AdaptSegNet) | torchvision (FADA)
  c.model.num_classes = 19
  c.model.multi_level = True  # auxiliary ASPP head on layer3 + its own discriminator
  c.model.aspp_dilations = (6, 12, 18, 24)
  c.model.aspp_branches = 2  # official code sums only the first 2 branches; 4 is the paper's ASPP
  # official: per-batch (per-device) statistics in training; 'frozen' (running statistics); 'sync' (statistics of
  # the global batch over all devices: torch SyncBatchNorm)
  c.model.bn_mode = "batch_stats"
  c.model.bn_eps = 1e-5
  # Decoders: aspp (DeepLab-v2's summed dilated convs) | mrnet (MRNet's: 1x1 + dilated branches of head_width
  # channels with head_norm (gn | bn) and ReLU, [SE block], 3x3 fuse to 2 x head_width, Dropout2d head_dropout,
  # 1x1 classifier; the main one reads concat(layer4, layer3); ResNet only)
  c.model.head = "aspp"
  c.model.head_width = 256
  c.model.head_norm = "gn"
  c.model.head_se = False
  c.model.head_dropout = 0.1
  # Compute dtype of every convolution, discriminators included: float32 | bfloat16 (params, optimizer states,
  # BatchNorm statistics and normalisation, softmax, resizing and losses stay float32) | float64 (everything,
  # params included; needs --jax_enable_x64: parity checks against reference code without float32 rounding).
  c.model.dtype = "float32"

  c.disc = ml_collections.ConfigDict()
  c.disc.arch = "fc"  # fc (AdaptSegNet's five 4x4 stride-2 convs) | pixel (FADA's fine-grained discriminator)
  c.disc.channels = (64, 128, 256, 512)  # fc: then a 1-channel 4x4 conv
  c.disc.width = 256  # pixel: 3x3 convs of width and width // 2, then two 3x3 heads (source, target)
  c.disc.input = "output"  # output (softmax of logits) | features (backbone layer4: "Ours (feature)")
  # JAL + WTM Table 3 variants, for any scheme: channels (fc) / width (pixel) x width_mult; front 'aspp' (DeepLab
  # ASPP ahead of the fc convs); count: independently initialised discriminators on the high-level (main) output,
  # trained alike, the segmenter's adversarial loss averaged over them (1 = the baseline's single one).
  c.disc.width_mult = 1
  c.disc.front = "none"
  c.disc.count = 1
  c.disc.feature_channels = (64, 128, 256)  # pixel-wise weighted DA's D_aux: 1x1 convs, then a 1x1 classifier
  c.disc.dropout = 0.5  # LSD-seg's patch D (its residual blocks; width = disc.width)

  # LSD-seg's generator (models/lsd_networks.py): ngf and the dropout of its residual blocks.
  c.gen = ml_collections.ConfigDict()
  c.gen.width = 64
  c.gen.dropout = 0.5

  c.loss = ml_collections.ConfigDict()
  c.loss.lambda_seg_main = 1.0
  c.loss.lambda_seg_aux = 0.1
  c.loss.lambda_adv_main = 1e-3
  c.loss.lambda_adv_aux = 2e-4
  c.loss.gan = "vanilla"  # vanilla (BCE) | ls (least squares, Appendix A)
  # FADA's domain encodings (methods/fada.py): soft (eq. 8, clipped) | hard (eq. 7, thresholded) | binary
  c.loss.encoding = "soft"
  c.loss.temperature = 1.8  # T of eq. 8
  c.loss.confidence = 0.9  # soft: clip threshold (1.0 = none, Table 6); hard: keep pixels at or above it
  c.loss.seg_on_scaled_logits = True  # FADA as run: segmentation CE on logits / T; False: eq. 3's plain logits
  # JAL + WTM (methods/jal_wtm.py): eq. 5 (high-level target output through the low-level discriminator) and its
  # weight (not given by the paper: the high-level adversarial weight); decoders with a weight transfer module
  # ('aux' = Dec1, 'main' = Dec2) and eq. 9's weights; whether eq. 9 also trains the original decoders' weights.
  c.loss.jal = False
  c.loss.lambda_adv_jal = 1e-3
  c.loss.wtm_levels = ()
  c.loss.lambda_adv_wtm_main = 1e-3
  c.loss.lambda_adv_wtm_aux = 2e-4
  c.loss.wtm_to_decoder = False
  # MRNet (methods/mrnet.py): memory regularisation weight and first step; D's source ('real') input: each
  # level's own softmax (AdaptSegNet) or the ensemble softmax(z_main + 0.5 z_aux) for every level (MRNet as run).
  c.loss.lambda_memory = 0.1
  c.loss.memreg_start = 15_000
  c.loss.disc_real = "level"
  # Pixel-wise weighted DA (methods/pixel_weighted.py): GenMap threshold T and mu (eq. 3-4), computed from the
  # ensemble prediction or each level's; the feature discriminator D_aux (eq. 5, 8) and its DisMap (eq. 6);
  # target weights also in D's loss; where weights meet D's coarse output ('image' | 'disc', see the method).
  # loss.genmap_weights: GenMap on the target adversarial terms of adaptsegnet / mrnet / jal_wtm / fada too
  # (methods/pixel_weights.py; always on in pixel_weighted).
  c.loss.genmap_weights = False
  c.loss.genmap_threshold = 0.9
  c.loss.genmap_mu = 0.1
  c.loss.genmap_from = "ensemble"  # | 'prediction' (z_main + eval.aux_weight z_aux) | 'level'
  c.loss.feature_disc = True
  c.loss.dismap = True
  c.loss.lambda_adv_feat = 5e-4
  c.loss.weight_disc = True
  c.loss.weight_grid = "image"
  # LSD-seg (methods/lsdseg.py): F's cross-domain adversarial weight (official adv_weight, the paper's beta) and
  # auxiliary-labelling weight (official c_weight, the paper's alpha), G's adversarial weight, G's L1 weight; D's
  # labelling head (False: Table 4 "w/o auxiliary loss"), patch-wise 4-way output (False: one per image);
  # space 'image' (G + patch D) | 'feature' (Table 4 "Feature space based D": a 1x1-conv D on fc7, no G).
  c.loss.lambda_adv_f = 0.1
  c.loss.lambda_aux_f = 0.1
  c.loss.lambda_adv_g = 0.1
  c.loss.lambda_rec = 1.0
  c.loss.aux_head = True
  c.loss.patch_disc = True
  c.loss.lsd_space = "image"
  c.loss.aux_labels = "nearest"  # D's source labels: nearest | official_transposed (see methods/lsdseg.py)
  # Segmentation cross-entropy: mean over labelled pixels (DeepLab schemes) | sum over them / batch (LSD-seg).
  c.loss.ce_reduction = "mean"

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2.5e-4
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.nesterov = False  # the paper says Nesterov; the official code does not use it
  c.optim.backbone_lr_mult = 1.0
  # The official AdaptSegNet / MRNet optimizer lists the Caffe ResNet's backbone tensors once per enclosing module
  # (stem 1x, bottleneck convs 3x, downsample convs 4x) and PyTorch <= 1.4 SGD steps each entry in turn
  # (optim.legacy_torch_sgd). False: every tensor once, the lr as stated; True: that loop, as run.
  c.optim.legacy_sgd = False
  c.optim.head_lr_mult = 10.0
  c.optim.head_modules = ("layer5", "layer6")
  c.optim.train_bn = False  # BatchNorm scale/shift trained (FADA self-distillation) or kept as loaded
  c.optim.power = 0.9
  c.optim.decay_steps = 250_000  # poly horizon; training stops at train.num_steps
  c.optim.warmup_steps = 0  # MRNet: lr x (0.1 + 0.9 step / warmup_steps) first, then poly
  # The segmenter's optimizer: sgd (above) | adam (LSD-seg's F: b1, b2, no weight decay, biases at bias_lr_mult x
  # lr, FCN-8s upsamplers frozen); schedule poly (power, decay_steps, warmup) | step (x step_factor every
  # step_every steps: LSD-seg's x0.1 every 8 epochs of min(|source|, |target|) iterations).
  c.optim.segmenter = "sgd"
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.bias_lr_mult = 2.0
  c.optim.schedule = "poly"
  c.optim.step_every = 23_800
  c.optim.step_factor = 0.1
  # Discriminators (and LSD-seg's generator): Adam(d_lr, d_b1, d_b2), on the poly schedule or constant.
  c.optim.d_schedule = "poly"
  c.optim.d_lr = 1e-4
  c.optim.d_b1 = 0.9
  c.optim.d_b2 = 0.99
  c.optim.wtm_lr = 1e-4  # JAL + WTM: SGD of the weight transfer modules, same poly schedule
  c.optim.wtm_momentum = 0.9
  c.optim.wtm_weight_decay = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""  # TFDS data_dir ('' = TFDS default); may be a bucket path
  c.data.source = "gta5"
  c.data.source_split = "train"
  c.data.target = "cityscapes_uda"
  c.data.target_split = "train"
  c.data.eval = "cityscapes_uda"
  c.data.eval_split = "validation"
  c.data.source_label_map = "cityscapes_ids_to_19"
  c.data.eval_label_map = "cityscapes_ids_to_19"
  c.data.source_size = (720, 1280)  # (H, W) resize
  c.data.target_size = (512, 1024)
  c.data.eval_size = (512, 1024)
  c.data.eval_label_size = (1024, 2048)  # evaluate at full label resolution
  c.data.eval_resize = "bicubic"  # how eval images reach eval_size: bicubic | lanczos (LSD-seg, as PIL's)
  # caffe_bgr (DeepLab Caffe weights) | vgg_bgr (Caffe VGG16 mean, FADA VGG) | imagenet (torchvision weights)
  c.data.normalization = "caffe_bgr"
  c.data.batch_size = 1  # global, per domain (1 source + 1 target)
  c.data.eval_batch_size = 1
  c.data.auto_prepare = True  # prepare generated datasets (the toy) on first use
  # Training augmentation per role (uda_jax/data/augment.py), in FADA's order: jitter -> scale + crop, or resize
  # -> flip. These defaults change nothing: AdaptSegNet only resizes to {role}_size.
  c.data.source_aug = augmentation()
  c.data.target_aug = augmentation()
  # FADA: draw the source class-balanced (rare classes more often) in sub-epochs of 3000 (class_balance.py).
  c.data.class_balanced = False

  c.eval = ml_collections.ConfigDict()
  c.eval.class_set = "cityscapes19"
  c.eval.checkpoint = "best"  # what --mode=eval restores: best | latest
  c.eval.class_subset = ()  # train ids the mIoU averages over; empty = the whole class set
  # Test-time augmentation. Official evaluations are single-scale without flip; FADA's multi_scale_inference
  # (written but commented out in its test.py) uses scales (0.7, 1.0, 1.3) with flip, averaging softmaxes.
  c.eval.scales = (1.0,)
  c.eval.flip = False
  # JAL + WTM evaluates the transferred decoder DecT2; True also evaluates the original Dec2 in the same pass
  # (its mIoU as the 'Dec2 mIoU' column of every result table).
  c.eval.original_decoder = False
  # Prediction at label size: 'bilinear' (logits upsampled, align_corners, then argmax: every DeepLab code) |
  # 'nearest' (argmax at eval size, labels upsampled nearest: LSD-seg's eval_cityscapes.py)
  c.eval.upsample = "bilinear"
  c.eval.aux_weight = 0.0  # predict argmax(z_main + aux_weight z_aux): MRNet evaluates with 0.5
  c.eval.num_images = 8  # colourised predictions of the first N eval images: workdir/predictions + TensorBoard

  # --mode=predict (uda_jax/predict.py): label PNGs of eval.checkpoint (or init_from) at eval.scales / eval.flip,
  # the input resized to data.eval_size, predictions at each image's native size.
  c.predict = ml_collections.ConfigDict()
  c.predict.dataset = ""  # TFDS dataset; '' = data.target (FADA: pseudo-labels of the target training split)
  c.predict.split = ""  # '' = data.target_split
  c.predict.input_dir = ""  # a folder of PNG / JPEG images instead of a dataset split
  c.predict.output_dir = ""  # '' = WORKDIR/predict_<dataset>_<split> (or _<folder name>)
  c.predict.confidence = False  # also write the winning class's probability as 16-bit PNGs

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 150_000
  c.train.log_every = 50
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 5_000
  c.train.keep_checkpoints = 3
  c.train.remat = False  # recompute ResNet blocks' activations in the backward pass: less memory, ~1/3 more FLOPs
  # A step whose losses, params or BatchNorm statistics turn NaN / Inf is never applied (steps.guard_finite);
  # stop: end the run there, naming the terms (the newest checkpoint stays the last good one); skip: go on,
  # counting skipped steps (train/skipped_steps).
  c.train.nan_policy = "stop"
  return c


def preset_names(arg: str | None, presets: dict, config_file: str) -> list[str]:
  """The comma-separated preset names of `--config FILE:NAME[,NAME]`; an unknown one is a one-line error."""
  names = [n for n in (arg or "").split(",") if n]
  unknown = [n for n in names if n not in presets]
  if unknown:
    raise UserError(f"unknown preset(s) {', '.join(map(repr, unknown))} in {config_file}; "
                    f"known: {', '.join(presets)}")
  return names


def augmentation(scale=(1.0, 1.0), crop=(), flip=0.0, jitter=(0.0, 0.0, 0.0, 0.0), pad_image=0.0, crop_margin=None):
  """One role's data.{source,target}_aug block; the defaults are no augmentation."""
  return ml_collections.ConfigDict(dict(
      # Random scale factor range. Needs crop; relative to data.{role}_size, or the native size if that is None.
      scale=tuple(scale),
      crop=tuple(crop),  # (H, W) random crop after scaling, padded if needed; () = resize to data.{role}_size
      flip=flip,  # horizontal flip probability
      # torchvision ColorJitter strengths (brightness, contrast, saturation, hue), applied to the native image
      jitter=tuple(jitter),
      pad_image=pad_image,  # pixel value (0-255, before normalisation) of the crop's padding; label pads are 255
      # None: the crop above (padded if needed); m >= 0: LSD-seg's unpadded crop at offsets in [0, H - h - m)
      crop_margin=crop_margin,
  ))


def fada_adversarial_aug(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """FADA's adversarial stage (JDAI-CV/FADA configs/deeplabv2_*_adv*.yaml): the source is resized as usual but
  colour-jittered (brightness, contrast, saturation 0.5, hue 0.2) and drawn class-balanced; no flip, no crop."""
  c.data.source_aug = augmentation(jitter=(0.5, 0.5, 0.5, 0.2))
  c.data.class_balanced = True
  return c


def fada_self_distill_aug(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """FADA's self-distillation stage trains on labelled images (there: Cityscapes with pseudo-labels, here the
  source role) with RandomScale(0.5, 1.5) of the native image, a 512x1024 crop (labels padded with 255), flips
  and colour jitter."""
  c.data.source_size = None
  c.data.source_aug = augmentation(scale=(0.5, 1.5), crop=(512, 1024), flip=0.5, jitter=(0.5, 0.5, 0.5, 0.2))
  return c


def toy(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The embedded procedurally generated domain pair and a small network through the same code."""
  c.data.source, c.data.target, c.data.eval = "uda_toy/source", "uda_toy/target", "uda_toy/target"
  # Generated at 96x192; trained and evaluated at 64x128 with predictions upsampled to the 96x192 labels.
  c.data.source_size = c.data.target_size = c.data.eval_size = (64, 128)
  c.data.eval_label_size = None
  c.data.batch_size = 4
  c.data.eval_batch_size = 20
  c.eval.class_subset = TOY_CLASSES
  c.eval.num_images = 4
  c.model.blocks = (1, 1, 1, 1)
  c.model.width = 16
  c.disc.channels = (32, 64, 128, 128)
  c.optim.lr = 2.5e-3
  c.optim.decay_steps = c.train.num_steps = 1200
  c.train.log_every = 50
  c.train.eval_every = c.train.checkpoint_every = 400
  return c


# Benchmarks other than the default GTA5 -> Cityscapes; every method config can apply them as presets.
def synthia(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """SYNTHIA-RAND-CITYSCAPES -> Cityscapes on the 16 shared classes; the mIoU over 16 and over the 13 without
  wall, fence, pole (mIoU*) are both computed from one confusion matrix (eval.class_subset picks the headline)."""
  c.data.source = "synthia_rand_cityscapes"
  c.data.source_label_map, c.data.eval_label_map = "synthia_ids_to_16", "cityscapes_ids_to_16"
  c.data.source_size = (760, 1280)
  c.model.num_classes = 16
  c.eval.class_set = "synthia16"
  return c


def synscapes(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Synscapes -> Cityscapes, 19 classes (AdaptSegNet Appendix B); Synscapes images are 1440x720."""
  c.data.source = "synscapes"
  c.data.source_size = (720, 1440)
  return c


def crosscity(city: str):
  """Cityscapes -> Cross-City <city>, 13 classes, evaluated on the city's 100 labelled test images."""
  def apply(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.data.source, c.data.source_split = "cityscapes_uda", "train"
    c.data.target, c.data.target_split = f"crosscity/{city}", "train"
    c.data.eval, c.data.eval_split = f"crosscity/{city}", "test"
    c.data.source_label_map, c.data.eval_label_map = "cityscapes_ids_to_13", "crosscity_ids_to_13"
    c.data.source_size = c.data.target_size = c.data.eval_size = (512, 1024)
    c.data.eval_label_size = None  # full label resolution
    c.model.num_classes = 13
    c.eval.class_set = "crosscity13"
    return c
  return apply


def gta5(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """GTA5 -> Cityscapes, 19 classes: the base config's pair, named so a command can say it."""
  return c


def multiscale_flip(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Test with FADA's multi_scale_inference: scales 0.7 / 1.0 / 1.3 of the eval size, plus horizontal flips."""
  c.eval.scales, c.eval.flip = (0.7, 1.0, 1.3), True
  return c


def genmap_weights(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """GenMap pixel weights (the pixel-wise weighted paper's eq. 3-4, T 0.9, mu 0.1) on the scheme's target
  adversarial terms (methods/pixel_weights.py): a combination no paper ran."""
  c.loss.genmap_weights = True
  return c


CROSSCITY_CITIES = ("rome", "rio", "tokyo", "taipei")
EVAL_PRESETS = {"multiscale_flip": multiscale_flip}
COMBINATION_PRESETS = {"genmap": genmap_weights}
AUGMENT_PRESETS = {"fada_adv_aug": fada_adversarial_aug, "fada_sd_aug": fada_self_distill_aug}
DATASET_PRESETS = {"gta5": gta5, "synthia": synthia, "synscapes": synscapes,
                   **{f"crosscity_{city}": crosscity(city) for city in CROSSCITY_CITIES}}

