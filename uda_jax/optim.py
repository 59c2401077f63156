"""Optimisers as the official code builds them: poly schedules, SGD with per-group lr multipliers, Adam."""

import optax
from flax import traverse_util


def poly(base_lr: float, decay_steps: int, power: float = 0.9):
  """lr(step) = base_lr * (1 - step / decay_steps) ** power, as the official `lr_poly`."""
  return lambda step: base_lr * (1.0 - step / decay_steps) ** power


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


def segmenter_sgd(optim_cfg, params):
  """SGD (momentum, torch-style weight decay) with the backbone at `backbone_lr_mult` x lr and the heads at
  `head_lr_mult` x lr; BatchNorm scale/shift frozen unless optim.train_bn (then trained and decayed with the
  backbone, as torch SGD over feature_extractor.parameters() does)."""
  schedule = poly(optim_cfg.lr, optim_cfg.decay_steps, optim_cfg.power)

  def sgd(mult):
    return optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay),
        optax.sgd(lambda s: mult * schedule(s), optim_cfg.momentum, nesterov=optim_cfg.nesterov))

  return optax.multi_transform(
      {"backbone": sgd(optim_cfg.backbone_lr_mult), "head": sgd(optim_cfg.head_lr_mult),
       "frozen": optax.set_to_zero()},
      param_groups(params, tuple(optim_cfg.head_modules), optim_cfg.train_bn))


def discriminator_adam(optim_cfg):
  schedule = poly(optim_cfg.d_lr, optim_cfg.decay_steps, optim_cfg.power)
  return optax.adam(schedule, b1=optim_cfg.d_b1, b2=optim_cfg.d_b2)


def wtm_sgd(optim_cfg):
  """JAL + WTM's weight transfer modules: SGD (momentum, weight decay 0 in the paper), poly schedule."""
  schedule = poly(optim_cfg.wtm_lr, optim_cfg.decay_steps, optim_cfg.power)
  return optax.chain(optax.add_decayed_weights(optim_cfg.wtm_weight_decay),
                     optax.sgd(schedule, optim_cfg.wtm_momentum))


def learning_rates(optim_cfg, step):
  """Current learning rates for logging."""
  lr = poly(optim_cfg.lr, optim_cfg.decay_steps, optim_cfg.power)(step)
  return {"lr_backbone": lr * optim_cfg.backbone_lr_mult, "lr_head": lr * optim_cfg.head_lr_mult,
          "lr_d": poly(optim_cfg.d_lr, optim_cfg.decay_steps, optim_cfg.power)(step)}


