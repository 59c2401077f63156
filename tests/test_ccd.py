"""Class Center Distance (FADA eq. 9): the formula, the one-pass accumulation, and the command line on the toy."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from uda_jax.errors import UserError
from uda_jax.tools import ccd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "adaptsegnet.py")


def _brute_force(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Eq. 9 literally: centres, mean squared distances to them, the ratio averaged over the other present classes."""
  present = [c for c in range(num_classes) if np.any(labels == c)]
  mu = {c: features[labels == c].mean(axis=0) for c in present}
  spread = {c: np.mean(np.sum((features[labels == c] - mu[c]) ** 2, axis=1)) for c in present}
  out = np.full(num_classes, np.nan)
  for i in present:
    out[i] = sum(spread[i] / np.sum((mu[i] - mu[j]) ** 2) for j in present if j != i) / (len(present) - 1)
  return out


def _toy_problem(seed=0, num_classes=6):
  """Features [N, D] of known classes with separated centres: class 3 has one member, class 5 none."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(40, 0), np.full(25, 1), np.full(60, 2), [3], np.full(10, 4)])
  centres = rng.normal(scale=3.0, size=(num_classes, 16))
  features = centres[labels] + rng.normal(scale=rng.uniform(0.5, 2.0, num_classes)[labels][:, None],
                                          size=(len(labels), 16))
  return features + 5.0, labels  # an offset: the E||x||^2 - ||mu||^2 form must not lose it


def test_class_center_distance_matches_eq9_brute_force():
  features, labels = _toy_problem()
  count = np.bincount(labels, minlength=6).astype(float)
  feat_sum = np.stack([features[labels == c].sum(0) if count[c] else np.zeros(16) for c in range(6)])
  sq_sum = np.array([np.sum(features[labels == c] ** 2) for c in range(6)])
  got = ccd.class_center_distance(count, feat_sum, sq_sum)
  want = _brute_force(features, labels, 6)
  np.testing.assert_allclose(got[:5], want[:5], rtol=1e-9)
  assert got[3] == 0.0  # one member: no spread
  assert np.isnan(got[5]) and np.isnan(want[5])  # absent: no centre
  assert np.all(got[[0, 1, 2, 4]] > 0)
  # Fewer than two classes present: nothing to compare with.
  assert np.isnan(ccd.class_center_distance([3, 0], np.ones((2, 4)), [5.0, 0.0])).all()


def test_accumulate_in_chunks_equals_one_chunk_and_brute_force():
  rng = np.random.default_rng(1)
  num_classes, dim = 5, 8
  features = rng.normal(size=(6, 4, 6, dim)) + rng.normal(size=dim)  # [B, h, w, D] at stride 2 of the labels
  labels = rng.integers(0, num_classes, size=(6, 8, 12))
  labels[rng.random(labels.shape) < 0.2] = 255  # ignored
  labels[0, 1, 1] = num_classes + 3  # ids outside the class set are ignored too
  labels[labels == 4] = 255  # class 4 absent -> NaN
  mask = np.array([True, True, True, True, True, False])  # a padded example drops out

  whole = ccd.accumulate(None, features, labels, num_classes, mask)
  chunks = None
  for lo, hi in ((0, 1), (1, 4), (4, 6)):
    chunks = ccd.accumulate(chunks, features[lo:hi], labels[lo:hi], num_classes, mask[lo:hi])
  for a, b in ((whole.count, chunks.count), (whole.feat_sum, chunks.feat_sum), (whole.sq_sum, chunks.sq_sum)):
    np.testing.assert_allclose(a, b, rtol=1e-12)

  # Brute force: each feature pixel (i, j) takes the label at its centre, pixel (2i + 1, 2j + 1).
  small = ccd.downsample_labels(labels, (4, 6))
  np.testing.assert_array_equal(small, labels[:, 1::2, 1::2])
  feats, labs = features[:5].reshape(-1, dim), small[:5].reshape(-1)
  keep = labs < num_classes
  want = _brute_force(feats[keep], labs[keep], num_classes)
  np.testing.assert_array_equal(whole.count, np.bincount(labs[keep], minlength=num_classes))
  got = ccd.class_center_distance(whole.count, whole.feat_sum, whole.sq_sum)
  np.testing.assert_allclose(got, want, rtol=1e-9)
  assert np.isnan(got[4]) and np.isfinite(got[:4]).all()


def test_float32_device_sums_keep_small_spreads_about_large_centres():
  """The jitted float32 path (as the CLI runs it) against float64 brute force, on features whose spread is
  1e-7 of their squared norm: E||x||^2 - ||mu||^2 of plain float32 sums would be pure rounding noise."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  num_classes, dim = 4, 16
  labels = rng.integers(0, num_classes, size=(4, 6, 8))
  centres = 300.0 + rng.normal(scale=0.05, size=(num_classes, dim))
  features = (centres[labels] + rng.normal(scale=0.02, size=(*labels.shape, dim))).astype(np.float32)
  step = jax.jit(lambda f, l, m: ccd.class_sums(f, l, num_classes, m, xp=jnp))
  stats = ccd.ClassStats.zeros(num_classes, dim)
  for lo, hi in ((0, 2), (2, 4)):
    stats.add(*jax.device_get(step(features[lo:hi], labels[lo:hi], np.ones(hi - lo, bool))))
  got = ccd.class_center_distance(stats.count, stats.feat_sum, stats.sq_sum)
  want = _brute_force(features.reshape(-1, dim).astype(np.float64), labels.reshape(-1), num_classes)
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_downsample_labels_takes_the_centre_pixel():
  labels = np.arange(7 * 10).reshape(1, 7, 10)
  # rows floor((i + 1/2) * 7 / 3) = 1, 3, 5; cols floor((j + 1/2) * 10 / 4) = 1, 3, 6, 8
  np.testing.assert_array_equal(ccd.downsample_labels(labels, (3, 4))[0], labels[0][[1, 3, 5]][:, [1, 3, 6, 8]])


def _run(module, *args, timeout=600):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_measures_a_toy_checkpoint_on_both_domains(toy_data_dir, tmp_path):
  workdir, out_dir = str(tmp_path / "run"), str(tmp_path / "ccd_out")
  small = [f"--config.data.data_dir={toy_data_dir}", "--config.model.width=8", "--config.disc.channels=(8,8,8,8)",
           "--config.data.eval_batch_size=4"]
  out = _run("uda_jax.main", f"--config={CONFIG}:toy", f"--workdir={workdir}", *small,
             "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
             "--config.data.batch_size=2", "--config.eval.num_images=0")
  assert out.returncode == 0, out.stderr[-3000:]

  out = _run("uda_jax.tools.ccd", f"--config={CONFIG}:toy", f"--workdir={workdir}", *small, "--max_images=8",
             "--domain=both", f"--output={out_dir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "**CCD source** (8 images, checkpoint step 2" in out.stdout and "**CCD joint**" in out.stdout
  assert "| road | sidewalk | building |" in out.stdout
  for name in ("ccd.md", "ccd.csv", "ccd.json"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0
  with open(os.path.join(out_dir, "ccd.json")) as f:
    doc = json.load(f)
  assert doc["step"] == 2 and list(doc["domains"]) == ["source", "target", "joint"]
  for domain, d in doc["domains"].items():
    assert d["images"] == (16 if domain == "joint" else 8)
    present = [c for c, n in d["pixels"].items() if n > 0]
    assert len(present) >= 3, (domain, d["pixels"])
    for c, v in d["per_class"].items():
      assert (v is not None and np.isfinite(v) and v >= 0) if c in present else v is None, (domain, c, v)
    assert np.isclose(d["mean"], np.mean([d["per_class"][c] for c in present]))
  joint = doc["domains"]["joint"]["pixels"]
  for c in joint:  # the joint statistics are the union of both domains'
    assert joint[c] == doc["domains"]["source"]["pixels"][c] + doc["domains"]["target"]["pixels"][c]
  with open(os.path.join(out_dir, "ccd.csv")) as f:
    rows = f.read().splitlines()
  assert rows[0].startswith("domain,images,step,road,") and rows[0].endswith(",mean") and len(rows) == 4
  if importlib.util.find_spec("matplotlib") is not None:
    with open(os.path.join(out_dir, "ccd.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_user_mistakes_are_user_errors(tiny_toy_config, tmp_path):
  """What the CLI prints as one-line errors (exit 2), raised in process."""
  with pytest.raises(UserError, match="--max_images=0: give a positive number"):
    ccd.run(tiny_toy_config, str(tmp_path), ("target",), max_images=0)
  with pytest.raises(UserError, match="nothing to measure: .* holds no checkpoint and config.init_from is empty"):
    ccd.run(tiny_toy_config, str(tmp_path / "empty"), ("target",), max_images=4)
  tiny_toy_config.data.source = ""
  with pytest.raises(UserError, match="data.source is empty"):
    ccd.run(tiny_toy_config, str(tmp_path), ("source", "target"), max_images=4)
  assert not (tmp_path / "empty").exists()
