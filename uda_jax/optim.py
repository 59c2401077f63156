"""Optimisers as the official code builds them: poly schedules, SGD with per-group lr multipliers, Adam."""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from uda_jax.errors import UserError


def poly(base_lr: float, decay_steps: int, power: float = 0.9):
  """lr(step) = base_lr * (1 - step / decay_steps) ** power, as the official `lr_poly`."""
  return lambda step: base_lr * (1.0 - step / decay_steps) ** power


def warmup_poly(optim_cfg):
  """The segmenter's lr: poly, after optim.warmup_steps of MRNet's linear warm-up lr * (0.1 + 0.9 step / warmup)
  (its adjust_learning_rate; 0 = none, the AdaptSegNet schedule)."""
  base, warm = poly(optim_cfg.lr, optim_cfg.decay_steps, optim_cfg.power), optim_cfg.get("warmup_steps", 0)
  if not warm:
    return base
  return lambda step: jnp.where(step < warm, optim_cfg.lr * (0.1 + 0.9 * step / warm), base(step))


def step_decay(base_lr: float, every: int, factor: float):
  """lr(step) = base_lr * factor ** (step // every): LSD-seg's step_scheduler (x0.1 every 8 epochs)."""
  return lambda step: base_lr * factor ** (step // every)


def segmenter_schedule(optim_cfg):
  """optim.schedule: 'poly' (with optional warm-up) or 'step' (optim.step_every, optim.step_factor)."""
  kind = optim_cfg.get("schedule", "poly")
  if kind == "poly":
    return warmup_poly(optim_cfg)
  if kind == "step":
    if optim_cfg.step_every < 1:
      raise UserError(f"optim.step_every={optim_cfg.step_every!r}: give a number of steps >= 1")
    return step_decay(optim_cfg.lr, optim_cfg.step_every, optim_cfg.step_factor)
  raise UserError(f"optim.schedule={kind!r}: choose 'poly' or 'step'")


def param_groups(params, head_modules, train_bn: bool = False):
  """Label every leaf 'head', 'frozen' (BatchNorm scale/shift unless train_bn) or 'backbone'."""
  flat = traverse_util.flatten_dict(params)

  def label(path):
    if any(p in head_modules for p in path):
      return "head"
    if not train_bn and path[:-1] + ("scale",) in flat:  # a BatchNorm module: its scale and shift stay as loaded
      return "frozen"
    return "backbone"

  return traverse_util.unflatten_dict({k: label(k) for k in flat})


def torch_multiplicity(path: tuple[str, ...]) -> int:
  """How often the official AdaptSegNet / MRNet parameter list names a tensor of the Caffe-layout ResNet.

  Their get_1x_lr_params_NOscale walks `for j in module.modules(): for k in j.parameters()` over conv1, bn1,
  layer1..layer4, so a tensor is listed once per module that encloses it, itself included: the stem conv once,
  a bottleneck conv 3x (layerN, the block, the conv), a downsample conv 4x (layerN, the block, the downsample
  Sequential, its conv). Our names follow torch's: `layerN_B` and `downsample_I` are a Sequential and its
  element (two modules), `conv` is our wrapper (none). The heads come from .parameters(): once."""
  if path[0] != "backbone":
    return 1
  return sum(2 if re.fullmatch(r"(layer\d+|downsample)_\d+", name) else 1 for name in path[1:-1] if name != "conv")


class LegacySGDState(NamedTuple):
  count: jax.Array
  momentum_buffer: Any


def legacy_torch_sgd(learning_rate, momentum: float, weight_decay: float, nesterov: bool, multiplicity):
  """torch.optim.SGD of PyTorch <= 1.4 over a parameter list that names some tensors several times, as the
  official AdaptSegNet and MRNet run it. Each listed entry is stepped in turn, so a tensor named m times is
  updated m times per iteration, each visit adding the weight decay to its gradient in place (the next visit
  sees it) and sharing the tensor's one momentum buffer (created from the first visit's gradient):
    for each of the m visits:  g += wd * p;  buf = g if new else momentum * buf + g;
                               p -= lr * (g + momentum * buf if nesterov else buf)
  The first update of a 3x tensor is 1 + 1.9 + 2.71 = 5.61 times the single one, of a 4x tensor 9.05 times.
  `multiplicity(path) -> int` for each leaf (path: its key names); 0 leaves it unchanged."""

  def init(params):
    return LegacySGDState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    lr, new = learning_rate(state.count), state.count == 0

    def leaf(path, g, p, buf):
      m, p0 = multiplicity(tuple(str(getattr(k, "key", k)) for k in path)), p
      for visit in range(m):
        g = g + weight_decay * p
        buf = jnp.where(new & (visit == 0), g, momentum * buf + g)
        p = p - lr * (g + momentum * buf if nesterov else buf)
      return p - p0, buf

    paths_grads, treedef = jax.tree_util.tree_flatten_with_path(grads)
    out = [leaf(path, g, p, b) for (path, g), p, b in
           zip(paths_grads, jax.tree.leaves(params), jax.tree.leaves(state.momentum_buffer))]
    return (jax.tree.unflatten(treedef, [u for u, _ in out]),
            LegacySGDState(state.count + 1, jax.tree.unflatten(treedef, [b for _, b in out])))

  return optax.GradientTransformation(init, update)


def segmenter_sgd(optim_cfg, params):
  """SGD (momentum, torch-style weight decay) with the backbone at `backbone_lr_mult` x lr and the heads at
  `head_lr_mult` x lr; BatchNorm scale/shift frozen unless optim.train_bn (then trained and decayed with the
  backbone, as torch SGD over feature_extractor.parameters() does). optim.legacy_sgd: the official AdaptSegNet /
  MRNet loop over duplicated backbone tensors instead (`legacy_torch_sgd`)."""
  if optim_cfg.get("segmenter", "sgd") == "adam":
    return segmenter_adam(optim_cfg, params)
  if optim_cfg.get("segmenter", "sgd") != "sgd":
    raise UserError(f"optim.segmenter={optim_cfg.segmenter!r}: choose 'sgd' or 'adam'")
  schedule = segmenter_schedule(optim_cfg)

  def sgd(mult):
    if optim_cfg.get("legacy_sgd", False):
      return legacy_torch_sgd(lambda s: mult * schedule(s), optim_cfg.momentum, optim_cfg.weight_decay,
                              optim_cfg.nesterov, torch_multiplicity)
    return optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay),
        optax.sgd(lambda s: mult * schedule(s), optim_cfg.momentum, nesterov=optim_cfg.nesterov))

  return optax.multi_transform(
      {"backbone": sgd(optim_cfg.backbone_lr_mult), "head": sgd(optim_cfg.head_lr_mult),
       "frozen": optax.set_to_zero()},
      param_groups(params, tuple(optim_cfg.head_modules), optim_cfg.train_bn))


def segmenter_adam(optim_cfg, params):
  """LSD-seg's F: Adam (optim.b1, b2), no weight decay, biases at optim.bias_lr_mult x lr (2x), on
  segmenter_schedule; FCN-8s's bilinear upsamplers ('upscore*', never given to the official optimizer) frozen."""
  flat = traverse_util.flatten_dict(params)
  label = lambda path: ("frozen" if any(p.startswith("upscore") for p in path) else
                        "bias" if path[-1] == "bias" else "weight")
  schedule = segmenter_schedule(optim_cfg)
  adam = lambda mult: optax.adam(lambda s: mult * schedule(s), b1=optim_cfg.b1, b2=optim_cfg.b2)
  return optax.multi_transform(
      {"weight": adam(1.0), "bias": adam(optim_cfg.bias_lr_mult), "frozen": optax.set_to_zero()},
      traverse_util.unflatten_dict({k: label(k) for k in flat}))


def discriminator_schedule(optim_cfg):
  """optim.d_schedule: 'poly' (AdaptSegNet's D) or 'constant' (LSD-seg's G and D)."""
  kind = optim_cfg.get("d_schedule", "poly")
  if kind == "constant":
    return optax.constant_schedule(optim_cfg.d_lr)
  if kind != "poly":
    raise UserError(f"optim.d_schedule={kind!r}: choose 'poly' or 'constant'")
  return poly(optim_cfg.d_lr, optim_cfg.decay_steps, optim_cfg.power)


def discriminator_adam(optim_cfg):
  return optax.adam(discriminator_schedule(optim_cfg), b1=optim_cfg.d_b1, b2=optim_cfg.d_b2)


def wtm_sgd(optim_cfg):
  """JAL + WTM's weight transfer modules: SGD (momentum, weight decay 0 in the paper), poly schedule."""
  schedule = poly(optim_cfg.wtm_lr, optim_cfg.decay_steps, optim_cfg.power)
  return optax.chain(optax.add_decayed_weights(optim_cfg.wtm_weight_decay),
                     optax.sgd(schedule, optim_cfg.wtm_momentum))


def learning_rates(optim_cfg, step):
  """Current learning rates for logging."""
  lr = segmenter_schedule(optim_cfg)(step)
  if optim_cfg.get("segmenter", "sgd") == "adam":
    seg = {"lr": lr, "lr_bias": lr * optim_cfg.bias_lr_mult}
  else:
    seg = {"lr_backbone": lr * optim_cfg.backbone_lr_mult, "lr_head": lr * optim_cfg.head_lr_mult}
  return {**seg, "lr_d": discriminator_schedule(optim_cfg)(step)}


