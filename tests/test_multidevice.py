"""Data parallelism: 4 devices and 1 device give the same step on the same global batch."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(bn_mode, *args):
  out = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_check.py"), bn_mode, *args],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  return [line.split() for line in out.stdout.splitlines()]


def test_four_devices_equal_one_device_with_frozen_batchnorm():
  rows = _run("frozen")
  states = [r for r in rows if r[0] == "state"]
  assert {r[1] for r in states} == {"seg", "d_main", "d_aux"}
  for _, name, _, diff, _, scale, _, where in states:
    assert float(diff) <= 1e-5 * max(float(scale), 1.0), (name, diff, where)
  for _, name, a, b in (r for r in rows if r[0] == "metric"):
    assert float(a) == pytest.approx(float(b), rel=1e-4, abs=1e-6), name
  # Multi-scale + flip evaluation with a padded batch: same confusion matrix and predictions on 4 devices.
  (_, _, cm_equal, _, preds_equal, _, pixels), = [r for r in rows if r[0] == "eval"]
  assert cm_equal == preds_equal == "True"
  assert 0 < int(pixels) < 7 * 48 * 96  # the padded example and the ignored ids (19) dropped out


def test_synchronised_batchnorm_on_four_devices_equals_one_device():
  """SyncBatchNorm (FADA self-distillation): statistics of the global batch, trained scale / shift; 4 devices
  normalise 1 image each with the statistics of all 4, exactly as 1 device normalises the batch of 4."""
  rows = _run("sync", "no_eval")
  for _, name, _, diff, _, scale, _, where in (r for r in rows if r[0] == "state"):
    assert float(diff) <= 2e-5 * max(float(scale), 1.0), (name, diff, where)
  for _, name, a, b in (r for r in rows if r[0] == "metric"):
    assert float(a) == pytest.approx(float(b), rel=1e-4, abs=1e-6), name
  (_, _, stats, _, affine), = [r for r in rows if r[0] == "moved"]
  assert float(stats) > 0 and float(affine) > 0


def test_jal_wtm_on_four_devices_equals_one_device():
  rows = _run("jal_wtm", "no_eval")
  states = [r for r in rows if r[0] == "state"]
  assert {r[1] for r in states} == {"seg", "d_main", "d_aux", "d_wtm", "wtm"}
  for _, name, _, diff, _, scale, _, where in states:
    assert float(diff) <= 1e-5 * max(float(scale), 1.0), (name, diff, where)
  metrics = {r[1]: (float(r[2]), float(r[3])) for r in rows if r[0] == "metric"}
  assert {"loss_wtm", "adv_jal", "loss_d_wtm"} <= set(metrics)
  for name, (a, b) in metrics.items():
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6), name


def test_pixel_weighted_on_four_devices_equals_one_device():
  rows = _run("pixel_weighted", "no_eval")
  states = [r for r in rows if r[0] == "state"]
  assert {r[1] for r in states} == {"seg", "d_main", "d_aux", "d_feat"}
  for _, name, _, diff, _, scale, _, where in states:  # in float64 (see multidevice_check.py)
    assert float(diff) <= 1e-12 * max(float(scale), 1.0), (name, diff, where)
  metrics = {r[1]: (float(r[2]), float(r[3])) for r in rows if r[0] == "metric"}
  assert {"loss_d_feat", "adv_feat", "memory", "weight_mean"} <= set(metrics)
  for name, (a, b) in metrics.items():
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6), name


def test_lsdseg_on_four_devices_equals_one_device():
  """F, G and D: summed per-image losses and the L1 term over the global batch give one update on any device count."""
  rows = _run("lsdseg", "no_eval")
  states = [r for r in rows if r[0] == "state"]
  assert {r[1] for r in states} == {"seg", "gen", "disc"}
  # In float64 (see multidevice_check.py). D's conv biases feed InstanceNorm, which removes them: their true
  # gradient is 0 and its float64 noise (~1e-12) becomes lr x noise / eps ~ 1e-8 in Adam's first step.
  for _, name, _, diff, _, scale, _, where in states:
    assert float(diff) <= (1e-7 if name == "disc" else 1e-12 * max(float(scale), 1.0)), (name, diff, where)
  metrics = {r[1]: (float(r[2]), float(r[3])) for r in rows if r[0] == "metric"}
  assert {"loss_seg", "loss_gen", "loss_disc", "rec", "d_aux", "f_adv"} <= set(metrics)
  for name, (a, b) in metrics.items():
    assert a == pytest.approx(b, rel=1e-4, abs=1e-6), name
