
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from uda_jax import losses, parallel


def test_cross_entropy_ignores_255_and_averages_valid_pixels():
  logits = np.array([[[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]], [[0.0, 3.0, 0.0], [1.0, 2.0, 3.0]]]], np.float32)
  labels = np.array([[[0, 255], [1, 2]]], np.int32)
  by_hand = []
  for (i, j), y in np.ndenumerate(labels[0]):
    if y != 255:
      z = logits[0, i, j]
      by_hand.append(-(z[y] - np.log(np.exp(z).sum())))
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), np.mean(by_hand), rtol=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
  assert float(losses.cross_entropy(np.zeros((1, 2, 2, 3), np.float32), np.full((1, 2, 2), 255))) == 0.0


def test_masked_mean_over_devices_is_the_global_mean():
  """Per-device values pmean to the global-batch loss even when valid counts differ per device."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, 4, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 5, (1, 4, 4)).astype(np.int32)
  labels[0, :3] = 255
  fn = jax.shard_map(lambda l, y: jax.lax.pmean(losses.cross_entropy(l, y, "data"), "data"), mesh=mesh,
                     in_specs=(P("data"), P("data")), out_specs=P())
  np.testing.assert_allclose(float(fn(logits, labels)), float(losses.cross_entropy(logits, labels)), rtol=1e-6)


def test_gan_losses_by_hand():
  d = np.array([[-2.0, 0.0], [1.0, 3.0]], np.float32)
  sig = 1 / (1 + np.exp(-d))
  np.testing.assert_allclose(float(losses.gan_loss(d, 0.0, "vanilla")), np.mean(-np.log(1 - sig)), rtol=1e-6)
  np.testing.assert_allclose(float(losses.gan_loss(d, 1.0, "vanilla")), np.mean(-np.log(sig)), rtol=1e-6)
  np.testing.assert_allclose(float(losses.gan_loss(d, 1.0, "ls")), np.mean((d - 1) ** 2), rtol=1e-6)
  np.testing.assert_allclose(float(losses.gan_loss(d, 0.0, "ls")), np.mean(d**2), rtol=1e-6)


def test_unknown_gan_is_an_error():
  import pytest  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="loss.gan"):
    losses.gan_loss(np.zeros(2), 0.0, "wgan")


