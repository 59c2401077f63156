import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from uda_jax import optim
from uda_jax.models.deeplab import DeepLabV2


def test_poly_schedule_values():
  f = optim.poly(2.5e-4, 250_000, 0.9)
  assert f(0) == 2.5e-4
  np.testing.assert_allclose(f(150_000), 2.5e-4 * 0.4**0.9, rtol=1e-12)
  np.testing.assert_allclose(f(125_000), 2.5e-4 * 0.5**0.9, rtol=1e-12)


def _toy_params():
  m = DeepLabV2(num_classes=3, blocks=(1, 1, 1, 1), width=4, bn=dict(mode="frozen"))
  return m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


def test_param_groups_label_heads_backbone_and_batchnorm():
  groups = optim.param_groups(_toy_params(), ("layer5", "layer6"))
  assert groups["layer6"]["conv2d_list_0"]["conv"]["kernel"] == "head"
  assert groups["layer5"]["conv2d_list_1"]["conv"]["bias"] == "head"
  assert groups["backbone"]["conv1"]["conv"]["kernel"] == "backbone"
  assert groups["backbone"]["bn1"]["scale"] == "frozen" and groups["backbone"]["bn1"]["bias"] == "frozen"
  assert groups["backbone"]["layer1_0"]["downsample_1"]["bias"] == "frozen"


def test_first_sgd_step_matches_the_torch_update(toy_config):
  """Step 0: p - lr * mult * (g + wd * p); BatchNorm affine untouched."""
  cfg = toy_config.optim
  params = _toy_params()
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
  tx = optim.segmenter_sgd(cfg, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = jax.tree.map(lambda p, u: p + u, params, updates)
  k = params["layer6"]["conv2d_list_0"]["conv"]["kernel"]
  np.testing.assert_allclose(new["layer6"]["conv2d_list_0"]["conv"]["kernel"],
                             k - cfg.lr * cfg.head_lr_mult * (0.5 + cfg.weight_decay * k), rtol=1e-5, atol=1e-9)
  k = params["backbone"]["conv1"]["conv"]["kernel"]
  np.testing.assert_allclose(new["backbone"]["conv1"]["conv"]["kernel"],
                             k - cfg.lr * cfg.backbone_lr_mult * (0.5 + cfg.weight_decay * k), rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(new["backbone"]["bn1"]["scale"], params["backbone"]["bn1"]["scale"])


def test_legacy_multiplicities_follow_the_torch_module_walk():
  names = lambda tree: {"/".join(k): optim.torch_multiplicity(k) for k in traverse_util.flatten_dict(tree)}
  m = names(_toy_params())
  assert m["backbone/conv1/conv/kernel"] == 1  # the stem conv: listed by conv1.modules() once
  assert m["backbone/layer1_0/conv2/conv/kernel"] == 3  # layer1, the block, the conv
  assert m["backbone/layer3_0/downsample_0/conv/kernel"] == 4  # + the downsample Sequential
  assert m["backbone/layer1_0/bn1/scale"] == 3 and m["layer6/conv2d_list_0/conv/kernel"] == 1


def test_legacy_first_update_is_5_61x_and_9_05x_the_single_one(toy_config):
  """No weight decay, momentum 0.9, one step of gradient 1: a 3x tensor moves 1 + 1.9 + 2.71 lr, a 4x one
  9.049 lr (the ratios measured against the official AdaptSegNet step), the stem and the heads 1 lr."""
  cfg = toy_config.optim
  cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.legacy_sgd, cfg.warmup_steps = 0.0, 0.9, False, True, 0
  params = _toy_params()
  tx = optim.segmenter_sgd(cfg, params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  u = lambda *path: float(np.mean(traverse_util.flatten_dict(updates)[path])) / -cfg.lr
  np.testing.assert_allclose(u("backbone", "conv1", "conv", "kernel"), 1.0, rtol=1e-4)
  np.testing.assert_allclose(u("backbone", "layer2_0", "conv1", "conv", "kernel"), 5.61, rtol=1e-4)
  np.testing.assert_allclose(u("backbone", "layer2_0", "downsample_0", "conv", "kernel"), 9.049, rtol=1e-4)
  np.testing.assert_allclose(u("layer6", "conv2d_list_0", "conv", "kernel"), cfg.head_lr_mult, rtol=1e-4)
  assert u("backbone", "bn1", "scale") == 0.0  # frozen BatchNorm untouched


class _TorchModule:
  """torch.nn modules named as the official Caffe-layout ResNet names them, from our parameter paths: layerN_B is
  layerN[B], downsample_I is downsample[I], our `conv` wrapper is no module."""

  @staticmethod
  def build(torch, flat):
    root = torch.nn.Module()
    for path, value in flat.items():
      module = root
      for name in path[:-1]:
        if name == "conv":
          continue
        parts = name.rsplit("_", 1) if name.startswith(("layer", "downsample")) else [name]
        for part in parts:
          if part not in module._modules:  # pylint: disable=protected-access
            module.add_module(part, torch.nn.Module())
          module = module._modules[part]  # pylint: disable=protected-access
      param = torch.nn.Parameter(torch.tensor(np.asarray(value)))
      # BatchNorm scale / bias (not a conv's bias) are frozen, as run: requires_grad False
      param.requires_grad = not (path[-1] in ("scale", "bias") and path[-2] != "conv")
      module.register_parameter(path[-1], param)
    return root


def _official_param_groups(root, lr):
  """deeplab_multi.py's optim_parameters: get_1x_lr_params_NOscale and get_10x_lr_params, as written there."""
  def one_x():
    b = [root.backbone._modules[n] for n in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")]
    for i in range(len(b)):
      for j in b[i].modules():
        for k in j.parameters():
          if k.requires_grad:
            yield k

  def ten_x():
    for head in (root.layer5, root.layer6):
      yield from head.parameters()

  return [{"params": list(one_x()), "lr": lr}, {"params": list(ten_x()), "lr": 10 * lr}]


def _torch14_sgd_step(groups, state, momentum, weight_decay, nesterov):
  """torch.optim.SGD.step of PyTorch <= 1.4: every listed entry in turn, weight decay added to the gradient in
  place, one momentum buffer per tensor."""
  for group in groups:
    for p in group["params"]:
      d_p = p.grad.data
      d_p.add_(weight_decay * p.data)
      if id(p) not in state:
        buf = state[id(p)] = d_p.clone()
      else:
        buf = state[id(p)]
        buf.mul_(momentum).add_(d_p)
      d_p = d_p + momentum * buf if nesterov else buf
      p.data.add_(-group["lr"] * d_p)


@pytest.mark.parametrize("nesterov", [False, True])
def test_legacy_sgd_equals_the_torch_1_4_loop_over_several_steps(toy_config, nesterov):
  torch = pytest.importorskip("torch")
  cfg = toy_config.optim
  cfg.lr, cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.legacy_sgd = 0.05, 0.01, 0.9, nesterov, True
  cfg.warmup_steps, cfg.decay_steps = 2, 10  # MRNet's warm-up, then poly: the lr changes every step
  params = _toy_params()
  flat = traverse_util.flatten_dict(params)
  root = _TorchModule.build(torch, flat)
  assert len(list(root.parameters())) == len(flat)
  groups = _official_param_groups(root, 0.0)
  trainable = sum(p.requires_grad for p in root.parameters())
  assert sum(len(g["params"]) for g in groups) > trainable  # duplicates: the official list is longer
  tx = optim.segmenter_sgd(cfg, params)
  opt_state, state, rng = tx.init(params), {}, np.random.default_rng(0)
  schedule = optim.warmup_poly(cfg)
  to_torch = {k: p for k, p in zip(flat, root.parameters())}  # registration order = flat order
  for step in range(4):
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat.items()}
    updates, opt_state = jax.jit(tx.update)(traverse_util.unflatten_dict(grads), opt_state, params)
    params = optax.apply_updates(params, updates)
    for k, p in to_torch.items():
      p.grad = torch.tensor(grads[k])
    groups[0]["lr"], groups[1]["lr"] = float(schedule(step)), float(schedule(step)) * 10
    _torch14_sgd_step(groups, state, cfg.momentum, cfg.weight_decay, nesterov)
  ours = traverse_util.flatten_dict(params)
  for k, p in to_torch.items():
    np.testing.assert_allclose(ours[k], p.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg="/".join(k))
  moved = traverse_util.flatten_dict(jax.tree.map(lambda a, b: np.abs(a - b).max(), params, _toy_params()))
  assert moved[("backbone", "layer2_0", "downsample_0", "conv", "kernel")] > 0.05  # the test can fail
  assert moved[("backbone", "bn1", "scale")] == 0.0
