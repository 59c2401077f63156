import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uda_jax.models.deeplab import ASPPClassifier, DeepLabV2
from uda_jax.models.discriminators import FCDiscriminator
from uda_jax.models.layers import BatchNorm, max_pool


@pytest.mark.parametrize("layout", ["caffe", "torchvision"])
@pytest.mark.parametrize("hw,out", [((720, 1280), (91, 161)), ((512, 1024), (65, 129)), ((256, 512), (33, 65))])
def test_resnet101_output_sizes(layout, hw, out):
  if layout == "torchvision":  # floor max-pool and stride on the 3x3 conv: 512x1024 -> 64x128
    out = {(720, 1280): (90, 160), (512, 1024): (64, 128), (256, 512): (32, 64)}[hw]
  model = DeepLabV2(layout=layout, bn=dict(mode="batch_stats"))
  x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  y = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert y["main"].shape == (1, *out, 19) and y["aux"].shape == (1, *out, 19)
  assert y["features"].shape == (1, *out, 2048)


def test_resnet101_has_the_official_parameter_count():
  model = DeepLabV2(bn=dict(mode="frozen"))
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  backbone = sum(np.prod(x.shape) for x in jax.tree.leaves(v["params"]["backbone"]))
  # torchvision resnet101 without fc: 44,549,160 - 2,049,000 (fc) = 42,500,160 params incl. BN affine.
  assert backbone == 42_500_160
  assert set(v["params"]["layer6"]) == {"conv2d_list_0", "conv2d_list_1"}  # official 2-branch forward


def test_aspp_sums_the_selected_branches():
  x = jax.random.normal(jax.random.key(1), (1, 20, 20, 6))
  four = ASPPClassifier(3, branches=4)
  v = four.init(jax.random.key(2), x)
  assert len(v["params"]) == 4
  two = ASPPClassifier(3, branches=2)
  v2 = {"params": {k: v["params"][k] for k in ("conv2d_list_0", "conv2d_list_1")}}
  branch = lambda i: jax.lax.conv_general_dilated(
      x, v["params"][f"conv2d_list_{i}"]["conv"]["kernel"], (1, 1), [(d, d), (d, d)], rhs_dilation=(d, d),
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + v["params"][f"conv2d_list_{i}"]["conv"]["bias"]
  outs = []
  for i, d in enumerate((6, 12, 18, 24)):
    outs.append(branch(i))
  np.testing.assert_allclose(four.apply(v, x), sum(outs), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(two.apply(v2, x), outs[0] + outs[1], rtol=1e-4, atol=1e-5)


def test_ceil_mode_max_pool_sizes_and_values():
  x = jnp.arange(7 * 7, dtype=jnp.float32).reshape(1, 7, 7, 1)
  y = max_pool(x, 3, 2, 1, ceil_mode=True)
  assert y.shape == (1, 4, 4, 1)  # torch: ceil((7 + 2 - 3) / 2) + 1 = 4 (floor mode: 4 too)
  assert max_pool(jnp.zeros((1, 360, 640, 1)), 3, 2, 1, ceil_mode=True).shape == (1, 181, 321, 1)
  assert max_pool(jnp.zeros((1, 360, 640, 1)), 3, 2, 1, ceil_mode=False).shape == (1, 180, 320, 1)
  assert float(y[0, 0, 0, 0]) == 8.0 and float(y[0, 3, 3, 0]) == 48.0


def test_batchnorm_batch_stats_mode_updates_running_stats_like_torch():
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5)) * 3 + 1
  bn = BatchNorm(mode="batch_stats")
  v = bn.init(jax.random.key(1), x, train=False)
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x).reshape(-1, 5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 5), (xs - xs.mean(0)) / np.sqrt(xs.var(0) + 1e-5),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * xs.mean(0), rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xs.var(0, ddof=1), rtol=1e-5)
  # eval (and frozen mode) uses the running statistics and leaves them alone
  frozen = BatchNorm(mode="frozen", eps=0.0)
  stats = {"mean": np.full(5, 2.0, np.float32), "var": np.full(5, 4.0, np.float32)}
  y2, upd2 = frozen.apply({"params": v["params"], "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y2, (np.asarray(x) - 2.0) / 2.0, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(upd2["batch_stats"]["mean"], stats["mean"])


def test_discriminator_shape():
  d = FCDiscriminator()
  x = jnp.zeros((1, 512, 1024, 19))
  y = jax.eval_shape(lambda x: d.init_with_output(jax.random.key(0), x)[0], x)
  assert y.shape == (1, 16, 32, 1)
