"""The PyTorch twin of the benchmarked training step (`python -m uda_jax.bench ... --compare_torch`).

Builds, with torch.nn modules, the network `config` describes (DeepLab-v2 ResNet in the caffe or torchvision
layout, ASPP heads, discriminators) and runs one training iteration exactly as the official code orders it
(official_implementations.md):

  adaptsegnet  wasidennis/AdaptSegNet train_gta2cityscapes_multi.py: zero grads, poly lrs; source forward,
               upsample (bilinear, align_corners=True), seg loss backward; target forward, D_i(softmax) vs the
               source label (D frozen), adversarial loss backward; D_i on detached source (label 0) / 2 and
               detached target (label 1) / 2 predictions, backward; SGD step, then one Adam step per D.
  source_only  the same without the target half.
  fada         JDAI-CV/FADA train_adv.py: source forward, CE on logits / T, backward; target forward, the
               fine-grained D on target features vs [a_t | 0], backward; segmenter step; D on detached
               features, 0.5 SCE each domain, backward; D step.

Deliberate differences from the official scripts, so that both sides do the same work: the ASPP builds only
its `model.aspp_branches` summed convs (the official 4-branch module leaves two without gradients, which SGD
skips), and each parameter is listed once in the optimizer (the official AdaptSegNet lists backbone tensors
~3x; see config_base.py optim.backbone_lr_mult).

torch is an optional extra (`pip install -e '.[torch]'`); this module imports it lazily.
"""

import math
import os
import time

import numpy as np

from uda_jax.errors import UserError

INSTALL = "pip install -e '.[torch]'"
MISSING = f"--compare_torch needs PyTorch, an optional extra: {INSTALL}"


def import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(MISSING) from e
  return torch


def threads() -> int:
  """Cores this process may run on (the affinity mask when the platform has one, else os.cpu_count())."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _modules():
  """The torch.nn modules, defined once torch is importable."""
  torch = import_torch()
  nn, F = torch.nn, torch.nn.functional

  def batch_norm(channels, model_cfg, train_bn):
    """BatchNorm2d as the config runs it: batch statistics in train() ('batch_stats'; 'sync' on one process),
    or running statistics always ('frozen': eval-mode normalisation, FADA's FrozenBatchNorm2d). The affine
    scale / shift are parameters (counted like ours) trained only when optim.train_bn."""
    frozen = model_cfg.bn_mode == "frozen"
    if model_cfg.bn_mode not in ("batch_stats", "frozen", "sync"):
      raise UserError(f"model.bn_mode must be 'batch_stats', 'frozen' or 'sync', got {model_cfg.bn_mode!r}")
    bn = (FrozenBN if frozen else nn.BatchNorm2d)(channels, eps=model_cfg.bn_eps, momentum=0.1)
    for p in bn.parameters():
      p.requires_grad = bool(train_bn)
    return bn

  class FrozenBN(nn.BatchNorm2d):
    """Running statistics always, as an affine map like maskrcnn-benchmark's FrozenBatchNorm2d (FADA runs it
    with eps 0, which newer torch's F.batch_norm refuses)."""

    def train(self, mode=True):
      return super().train(False)

    def forward(self, x):
      scale = self.weight * (self.running_var + self.eps).rsqrt()
      shift = self.bias - self.running_mean * scale
      return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

  def conv(cin, cout, k, stride=1, padding=0, dilation=1, bias=False):
    c = nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=bias)
    nn.init.normal_(c.weight, 0.0, 0.01)  # DeepLab's init (classifier biases keep torch's default)
    return c

  class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, downsample, layout, bn):
      super().__init__()
      s1, s2 = (stride, 1) if layout == "caffe" else (1, stride)
      self.conv1, self.bn1 = conv(inplanes, planes, 1, s1), bn(planes)
      self.conv2, self.bn2 = conv(planes, planes, 3, s2, dilation, dilation), bn(planes)
      self.conv3, self.bn3 = conv(planes, planes * 4, 1), bn(planes * 4)
      self.downsample = nn.Sequential(conv(inplanes, planes * 4, 1, stride), bn(planes * 4)) if downsample else None

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = F.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return F.relu(out + (self.downsample(x) if self.downsample is not None else x))

  class ResNet(nn.Module):
    """Returns (layer3, layer4): caffe = stride on conv1, ceil max-pool, every layer3 / layer4 block at dilation
    2 / 4 with a projection on each layer's first block; torchvision = stride on conv2, floor max-pool, first
    block of layer3 / layer4 at dilation 1 / 2."""

    def __init__(self, blocks, width, layout, bn):
      super().__init__()
      if layout not in ("caffe", "torchvision"):
        raise UserError(f"model.layout must be 'caffe' or 'torchvision', got {layout!r}")
      self.layout = layout
      self.conv1, self.bn1 = conv(3, width, 7, 2, 3), bn(width)
      plan = ([(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 4, 4)] if layout == "caffe"
              else [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)])
      inplanes = width
      for i, (n, (stride, d_first, d_rest)) in enumerate(zip(blocks, plan)):
        planes, layer = width * 2**i, []
        for j in range(n):
          first = j == 0
          downsample = first and (stride != 1 or inplanes != planes * 4 or (layout == "caffe" and d_first > 1))
          layer.append(Bottleneck(inplanes, planes, stride if first else 1, d_first if first else d_rest,
                                  downsample, layout, bn))
          inplanes = planes * 4
        setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x):
      x = F.relu(self.bn1(self.conv1(x)))
      x = F.max_pool2d(x, 3, 2, 1, ceil_mode=self.layout == "caffe")
      x = self.layer2(self.layer1(x))
      f3 = self.layer3(x)
      return f3, self.layer4(f3)

  class Classifier(nn.Module):
    """Classifier_Module / ASPP_Classifier_V2: the first `branches` 3x3 dilated convs (bias), summed."""

    def __init__(self, cin, num_classes, dilations, branches):
      super().__init__()
      if not 1 <= branches <= len(dilations):
        raise UserError(f"model.aspp_branches must be in 1..{len(dilations)}, got {branches}")
      self.conv2d_list = nn.ModuleList([conv(cin, num_classes, 3, 1, d, d, bias=True)
                                        for d in tuple(dilations)[:branches]])

    def forward(self, x):
      out = self.conv2d_list[0](x)
      for c in self.conv2d_list[1:]:
        out = out + c(x)
      return out

  class DeepLab(nn.Module):
    """{'main': layer6 logits, 'aux': layer5 logits (multi-level), 'features': layer4}, at output stride 8."""

    def __init__(self, m, train_bn):
      super().__init__()
      blocks = tuple(m.blocks) if m.blocks else {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[m.depth]
      self.backbone = ResNet(blocks, m.width, m.layout, lambda c: batch_norm(c, m, train_bn))
      self.multi_level = m.multi_level
      self.layer6 = Classifier(m.width * 32, m.num_classes, m.aspp_dilations, m.aspp_branches)
      if m.multi_level:
        self.layer5 = Classifier(m.width * 16, m.num_classes, m.aspp_dilations, m.aspp_branches)

    def forward(self, x):
      f3, f4 = self.backbone(x)
      out = {"main": self.layer6(f4), "features": f4}
      if self.multi_level:
        out["aux"] = self.layer5(f3)
      return out

  class FCDiscriminator(nn.Module):
    """AdaptSegNet's: 4x4 stride-2 convs (bias) with LeakyReLU 0.2, then a 1-channel one; torch default init."""

    def __init__(self, cin, channels):
      super().__init__()
      chans = (cin, *channels)
      self.convs = nn.ModuleList([nn.Conv2d(a, b, 4, 2, 1) for a, b in zip(chans[:-1], chans[1:])])
      self.classifier = nn.Conv2d(chans[-1], 1, 4, 2, 1)

    def forward(self, x):
      for c in self.convs:
        x = F.leaky_relu(c(x), 0.2)
      return self.classifier(x)

  class PixelDiscriminator(nn.Module):
    """FADA's fine-grained D: 3x3 convs of width and width // 2 (LeakyReLU 0.2), source and target heads,
    concatenated and upsampled (align_corners=True) to the image size."""

    def __init__(self, cin, width, classes_per_domain):
      super().__init__()
      self.D = nn.Sequential(nn.Conv2d(cin, width, 3, 1, 1), nn.LeakyReLU(0.2),
                             nn.Conv2d(width, width // 2, 3, 1, 1), nn.LeakyReLU(0.2))
      self.cls1 = nn.Conv2d(width // 2, classes_per_domain, 3, 1, 1)
      self.cls2 = nn.Conv2d(width // 2, classes_per_domain, 3, 1, 1)

    def forward(self, x, size):
      x = self.D(x)
      return F.interpolate(torch.cat([self.cls1(x), self.cls2(x)], 1), size, mode="bilinear", align_corners=True)

  return DeepLab, FCDiscriminator, PixelDiscriminator


def _levels(config):
  return ("main", "aux") if config.model.multi_level else ("main",)


def build(config):
  """(segmenter, {state name: discriminator}) for `config`, named like our states (d_main, d_aux)."""
  if config.model.arch == "deeplabv2_vgg16":
    raise UserError("compare_torch supports the ResNet DeepLab-v2 configs (model.arch='deeplabv2_resnet'), "
                    "not deeplabv2_vgg16")
  if config.model.arch != "deeplabv2_resnet":
    raise UserError(f"model.arch {config.model.arch!r} is not known")
  DeepLab, FCDiscriminator, PixelDiscriminator = _modules()  # pylint: disable=invalid-name
  seg = DeepLab(config.model, config.optim.train_bn)
  features = config.model.width * 32
  if config.method == "source_only":
    return seg, {}
  if config.method == "adaptsegnet":
    if config.disc.arch != "fc":
      raise UserError(f"method 'adaptsegnet' uses disc.arch='fc', not {config.disc.arch!r}")
    cin = features if config.disc.input == "features" else config.model.num_classes
    return seg, {f"d_{lvl}": FCDiscriminator(cin, tuple(config.disc.channels)) for lvl in _levels(config)}
  if config.method == "fada":
    if config.disc.arch != "pixel":
      raise UserError(f"method 'fada' needs disc.arch='pixel', not {config.disc.arch!r}")
    k = 1 if config.loss.encoding == "binary" else config.model.num_classes
    return seg, {"d_main": PixelDiscriminator(features, config.disc.width, k)}
  raise UserError(f"config.method {config.method!r} is not known")


def check(config, num_steps: int = 1):
  """Raises UserError (a one-line message) when torch is missing or `config` / `num_steps` cannot be compared;
  builds the modules on torch's meta device, so it allocates nothing."""
  torch = import_torch()
  if num_steps < 1:
    raise UserError("--compare_torch times real iterations: use --steps 1 or more")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise UserError(f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
  if config.method == "adaptsegnet" and config.loss.gan not in ("vanilla", "ls"):
    raise UserError(f"loss.gan must be 'vanilla' or 'ls', got {config.loss.gan!r}")
  if config.method == "fada" and config.loss.encoding not in ("soft", "hard", "binary"):
    raise UserError(f"loss.encoding {config.loss.encoding!r} is not known; choose soft, hard or binary")
  with torch.device("meta"):
    build(config)


def num_params(seg, discs) -> int:
  """Every parameter, trained or not (BatchNorm scale / shift included, as in our state.params)."""
  return sum(p.numel() for m in (seg, *discs.values()) for p in m.parameters())


class Step:
  """One official training iteration of `config.method` on a fixed batch (NHWC numpy, as bench.random_batch)."""

  def __init__(self, config, batch, device="cpu", seed=0):
    torch = self.torch = import_torch()
    check(config)
    torch.manual_seed(seed)
    self.config, self.device = config, torch.device(device)
    self.seg, self.discs = build(config)
    self.seg.to(self.device).train()  # model.train(): batch statistics unless BN is frozen
    for d in self.discs.values():
      d.to(self.device).train()
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
    self.source = to(batch["source_image"].transpose(0, 3, 1, 2))
    self.label = to(batch["source_label"].astype(np.int64))
    self.target = to(batch["target_image"].transpose(0, 3, 1, 2)) if config.method != "source_only" else None
    o = config.optim
    heads = tuple(o.head_modules)
    named = [(n, p) for n, p in self.seg.named_parameters() if p.requires_grad]
    is_head = lambda n: n.split(".")[0] in heads
    self.lr_mults = (o.backbone_lr_mult, o.head_lr_mult)
    self.opt = torch.optim.SGD(
        [{"params": [p for n, p in named if not is_head(n)], "lr": o.lr * o.backbone_lr_mult},
         {"params": [p for n, p in named if is_head(n)], "lr": o.lr * o.head_lr_mult}],
        lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    self.d_opts = {k: torch.optim.Adam(d.parameters(), lr=o.d_lr, betas=(o.d_b1, o.d_b2))
                   for k, d in self.discs.items()}
    self.it = 0
    self.bf16 = config.model.dtype == "bfloat16"

  def _forward(self, x):
    """Segmenter forward with the logits upsampled (bilinear, align_corners=True) to the input size."""
    torch = self.torch
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
      out = self.seg(x)
    out = {k: v.float() for k, v in out.items()}
    up = lambda v: torch.nn.functional.interpolate(v, x.shape[2:], mode="bilinear", align_corners=True)
    return {**out, **{k: up(v) for k, v in out.items() if k in ("main", "aux")}}

  def _set_lrs(self):
    o, poly = self.config.optim, lambda lr: lr * (1.0 - self.it / o.decay_steps) ** o.power
    for g, mult in zip(self.opt.param_groups, self.lr_mults):
      g["lr"] = poly(o.lr) * mult
    for opt in self.d_opts.values():
      for g in opt.param_groups:
        g["lr"] = poly(o.d_lr)

  def __call__(self):
    """Runs one iteration; returns its losses (floats; reading them waits for the device)."""
    self._set_lrs()
    self.opt.zero_grad()
    for opt in self.d_opts.values():
      opt.zero_grad()
    method = self.config.method
    losses = self._fada() if method == "fada" else self._adaptsegnet()
    self.opt.step()
    for opt in self.d_opts.values():
      opt.step()
    self.it += 1
    return {k: float(v) for k, v in losses.items()}

  def _adaptsegnet(self):
    """train_gta2cityscapes_multi.py's iteration (source_only: its first half)."""
    torch, c = self.torch, self.config.loss
    F = torch.nn.functional
    lvls = _levels(self.config)
    lambda_seg = {"main": c.lambda_seg_main, "aux": c.lambda_seg_aux}
    lambda_adv = {"main": c.lambda_adv_main, "aux": c.lambda_adv_aux}
    for d in self.discs.values():
      for p in d.parameters():
        p.requires_grad = False
    out_s = self._forward(self.source)
    seg = {lvl: F.cross_entropy(out_s[lvl], self.label, ignore_index=255) for lvl in lvls}
    loss = sum(lambda_seg[lvl] * seg[lvl] for lvl in lvls)
    loss.backward()
    losses = {f"seg_{lvl}": seg[lvl].detach() for lvl in lvls}
    if not self.discs:
      return losses
    crit = F.binary_cross_entropy_with_logits if c.gan == "vanilla" else F.mse_loss
    gan = lambda logits, label: crit(logits, torch.full_like(logits, label))
    d_in = lambda out, lvl: out["features"] if self.config.disc.input == "features" else F.softmax(out[lvl], 1)

    out_t = self._forward(self.target)
    adv = {lvl: gan(self.discs[f"d_{lvl}"](d_in(out_t, lvl)), 0.0) for lvl in lvls}
    sum(lambda_adv[lvl] * adv[lvl] for lvl in lvls).backward()
    for d in self.discs.values():
      for p in d.parameters():
        p.requires_grad = True
    d_loss = {}
    for domain, out in ((0.0, out_s), (1.0, out_t)):  # source (label 0), then target (label 1)
      for lvl in lvls:
        l_d = gan(self.discs[f"d_{lvl}"](d_in(out, lvl).detach()), domain) / 2
        l_d.backward()
        d_loss[lvl] = d_loss.get(lvl, 0.0) + l_d.detach()
    losses.update({f"adv_{lvl}": adv[lvl].detach() for lvl in lvls})
    losses.update({f"loss_d_{lvl}": d_loss[lvl] for lvl in lvls})
    return losses

  def _fada(self):
    """train_adv.py's iteration; the segmenter and D steps follow in __call__ (official: fe/cls step before the
    D losses, which use only detached features and the pre-step D, so the order does not change the work)."""
    torch, c = self.torch, self.config.loss
    F = torch.nn.functional
    d = self.discs["d_main"]

    def knowledge(logits):
      p = F.softmax(logits.detach() / c.temperature, 1)
      if c.encoding == "soft":
        return p.clamp(max=c.confidence), None
      if c.encoding == "hard":
        conf, idx = p.max(1)
        return F.one_hot(idx, p.shape[1]).permute(0, 3, 1, 2).to(p.dtype), conf >= c.confidence
      return torch.ones_like(p[:, :1]), None  # binary

    def sce(logits, target, mask):
      nll = -(target * F.log_softmax(logits, 1)).sum(1)
      return nll.mean() if mask is None else (nll * mask).sum() / mask.sum().clamp(min=1)

    cat = lambda a, domain: torch.cat([a, torch.zeros_like(a)] if domain == 0 else [torch.zeros_like(a), a], 1)
    out_s = self._forward(self.source)
    z_s = out_s["main"] / c.temperature if c.seg_on_scaled_logits else out_s["main"]
    seg = F.cross_entropy(z_s, self.label, ignore_index=255)
    (c.lambda_seg_main * seg).backward()
    a_s, m_s = knowledge(out_s["main"])
    out_t = self._forward(self.target)
    a_t, m_t = knowledge(out_t["main"])
    adv = sce(d(out_t["features"], self.target.shape[2:]), cat(a_t, 0), m_t)
    (c.lambda_adv_main * adv).backward()
    for p in d.parameters():  # official: optimizer_D.zero_grad() after the segmenter's step
      p.grad = None
    l_src = 0.5 * sce(d(out_s["features"].detach(), self.source.shape[2:]), cat(a_s, 0), m_s)
    l_src.backward()
    l_tgt = 0.5 * sce(d(out_t["features"].detach(), self.target.shape[2:]), cat(a_t, 1), m_t)
    l_tgt.backward()
    return {"seg_main": seg.detach(), "adv_main": adv.detach(), "loss_d_main": (l_src + l_tgt).detach()}


def benchmark(config, batch, num_steps, device=None, num_threads=None, profile=None, on_timed=None):
  """Median wall time of `num_steps` official torch iterations after one warm-up, on the same batch; with
  `profile` (directory, steps), then that many iterations under torch.profiler (a Chrome trace in the directory,
  and the table of the ops that took the most device or CPU time under 'torch_profile'). `on_timed(fields)` is
  called with the timed fields before the profile.

  Runs on the GPU when JAX does and torch has CUDA, else on the CPU with `num_threads` intra-op threads (default:
  every core this process may use, as XLA:CPU does). Time it after our step, not before: torch's OpenMP workers
  spin for a while after each op and would slow a JAX step that follows.
  """
  torch = import_torch()
  check(config, num_steps)
  if device is None:
    import jax  # pylint: disable=g-import-not-at-top
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  n_threads = num_threads or threads()
  torch.set_num_threads(n_threads)
  if device == "cuda":
    torch.backends.cudnn.benchmark = True  # as the official training scripts set it
    torch.cuda.reset_peak_memory_stats()
  step = Step(config, batch, device)
  first = step()  # warm-up (reading the losses waits for the device)
  times = []
  for _ in range(num_steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  if not all(math.isfinite(v) for v in first.values()):
    raise RuntimeError(f"the torch iteration's losses are not finite: {first}")
  if device == "cuda":
    torch.cuda.synchronize()
  peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
  out = {"torch_version": f"{torch.__version__} ({device})", "torch_step_s": float(np.median(times)),
         "torch_peak_memory_gib": peak,
         "torch_threads": n_threads, "torch_params": num_params(step.seg, step.discs), "torch_first_losses": first}
  if on_timed:
    on_timed(dict(out))
  if profile:
    try:
      out["torch_profile"] = _profile(torch, step, device, *profile)
    except Exception as e:  # pylint: disable=broad-except  # keep the timed figures
      out["torch_profile"] = f"torch profile: not taken ({type(e).__name__}: {e})"
  return out


def _profile(torch, step, device, log_dir, num_steps, top=25):
  """torch.profiler over `num_steps` iterations: writes its Chrome trace under `log_dir`, returns its op table."""
  activities = [torch.profiler.ProfilerActivity.CPU]
  if device == "cuda":
    activities.append(torch.profiler.ProfilerActivity.CUDA)
  with torch.profiler.profile(activities=activities) as prof:
    for _ in range(num_steps):
      step()
    if device == "cuda":
      torch.cuda.synchronize()
  os.makedirs(log_dir, exist_ok=True)
  prof.export_chrome_trace(os.path.join(log_dir, "torch_trace.json"))
  sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
  return (f"torch profile: {num_steps} iterations, sorted by {sort} (trace: {log_dir})\n"
          + prof.key_averages().table(sort_by=sort, row_limit=top))
