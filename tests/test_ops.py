import numpy as np
import pytest

from uda_jax.ops import resize_bilinear


def reference_align_corners(x, size):
  """Direct per-pixel bilinear interpolation with align_corners=True."""
  n, h, w, c = x.shape
  ho, wo = size
  out = np.zeros((n, ho, wo, c), np.float64)
  for i in range(ho):
    y = i * (h - 1) / (ho - 1) if ho > 1 else 0.0
    y0 = int(np.floor(y)); y1 = min(y0 + 1, h - 1); fy = y - y0
    for j in range(wo):
      xx = j * (w - 1) / (wo - 1) if wo > 1 else 0.0
      x0 = int(np.floor(xx)); x1 = min(x0 + 1, w - 1); fx = xx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


@pytest.mark.parametrize("size", [(13, 21), (5, 4), (1, 3), (7, 7)])
def test_resize_matches_align_corners_reference(size):
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(resize_bilinear(x, size)), reference_align_corners(x, size),
                             rtol=1e-5, atol=1e-5)


def test_resize_keeps_corners_and_linear_ramps():
  ramp = np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1).repeat(2, axis=1)
  out = np.asarray(resize_bilinear(ramp, (2, 7)))
  np.testing.assert_allclose(out[0, 0, :, 0], np.linspace(0, 3, 7), atol=1e-6)  # a ramp stays a ramp


def test_resize_matches_torch_when_available():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(1, 9, 17, 4)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(33, 65),
                                         mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(resize_bilinear(x, (33, 65))), want, rtol=1e-5, atol=1e-5)
