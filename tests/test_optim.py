import jax
import jax.numpy as jnp
import numpy as np

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
