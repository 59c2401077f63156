"""Evaluation: multi-scale + flip prediction against a PyTorch transcription of FADA's multi_scale_inference,
confusion matrices by hand, the SYNTHIA mIoU / mIoU13 pair, result tables and colourised predictions."""

import csv
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from uda_jax import evaluate, results, visualize
from uda_jax.data import labels

C = 5


def _forward_np(x, w):
  """A stand-in segmenter: per-pixel linear logits plus a column ramp, so flipping the input matters, and a
  stride-2 output (logits at half resolution) so the upsampling matters."""
  ramp = np.linspace(-1.0, 1.0, x.shape[2])[None, :, None]
  return (x @ w + ramp * np.arange(C))[:, ::2, ::2]


@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((1.0,), True), ((0.7, 1.0, 1.3), True),
                                         ((0.5, 1.0), False)])
def test_predict_matches_fada_multi_scale_inference_in_torch(scales, flip):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 17, 26, 3)).astype(np.float32)
  w = rng.normal(size=(3, C)).astype(np.float32)
  label_size = (23, 37)

  def forward_torch(x):  # NCHW in, NCHW out
    return torch.from_numpy(_forward_np(x.permute(0, 2, 3, 1).numpy(), w).astype(np.float32)).permute(0, 3, 1, 2)

  # FADA test.py: per scale, resize the input (bilinear, align_corners), upsample the logits to the label size,
  # softmax, add; the flipped input's output is flipped back and added too.
  x = torch.from_numpy(image).permute(0, 3, 1, 2)
  total = 0
  for s in scales:
    xs = F.interpolate(x, size=(int(17 * s), int(26 * s)), mode="bilinear", align_corners=True)
    up = lambda z: F.softmax(F.interpolate(forward_torch(z), size=label_size, mode="bilinear", align_corners=True), 1)
    total = total + up(xs)
    if flip:
      total = total + up(torch.flip(xs, [3])).flip(3)
  want = total.argmax(1).numpy()

  got = evaluate.predict(lambda v: jnp.asarray(_forward_np(np.asarray(v), w)), jnp.asarray(image), label_size,
                         scales, flip)
  assert got.shape == (2, *label_size)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_flip_changes_the_prediction_of_a_flip_sensitive_network():
  rng = np.random.default_rng(1)
  image = jnp.asarray(rng.normal(size=(1, 8, 12, 3)).astype(np.float32)) * 0.01
  w = rng.normal(size=(3, C)).astype(np.float32)
  forward = lambda v: jnp.asarray(_forward_np(np.asarray(v), w))
  plain = np.asarray(evaluate.predict(forward, image, (8, 12)))
  flipped = np.asarray(evaluate.predict(forward, image, (8, 12), flip=True))
  # The ramp dominates: without flip the left side is class 0 and the right side class C-1; averaging with the
  # mirrored ramp cancels it, so the prediction changes.
  assert plain[0, 0, 0] == 0 and plain[0, 0, -1] == C - 1
  assert not np.array_equal(plain, flipped)


def test_confusion_matrix_by_hand():
  labels_ = jnp.array([[[0, 1, 2, 255]], [[1, 1, 0, 0]]])
  pred = jnp.array([[[0, 2, 2, 1]], [[0, 0, 0, 0]]])
  cm = evaluate.confusion_matrix(pred, labels_, jnp.array([True, True]), 3)
  want = np.zeros((3, 3), int)
  for gt, p in [(0, 0), (1, 2), (2, 2), (1, 0), (1, 0), (0, 0), (0, 0)]:
    want[gt, p] += 1
  np.testing.assert_array_equal(np.asarray(cm), want)
  masked = evaluate.confusion_matrix(pred, labels_, jnp.array([True, False]), 3)
  assert int(np.asarray(masked).sum()) == 3  # the padded second example and the 255 pixel drop out


def test_synthia_summary_reports_the_16_and_13_class_means_from_one_matrix():
  rng = np.random.default_rng(2)
  cm = rng.integers(0, 50, (16, 16)) + np.diag(rng.integers(50, 500, 16))
  summary = evaluate.summarize(cm, labels.CLASS_NAMES_16, None, labels.EXTRA_MEANS["synthia16"])
  iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
  assert summary["mIoU"] == pytest.approx(100 * iou.mean())
  assert summary["extra"]["mIoU13"] == pytest.approx(100 * np.delete(iou, [3, 4, 5]).mean())
  assert list(summary["per_class"]) == list(labels.CLASS_NAMES_16)


def _summary():
  return {"per_class": {"road": 90.0, "vegetation": 80.5, "bicycle": 10.25}, "mIoU": 60.25,
          "extra": {"mIoU13": 70.0}, "pixel_acc": 95.0}


def test_tables_follow_the_papers_columns_and_csv_round_trips(tmp_path):
  md = results.markdown_table(_summary())
  assert md.splitlines()[0] == "| road | veg | bike | mIoU | mIoU13 |"
  assert md.splitlines()[2] == "| 90.0 | 80.5 | 10.2 | 60.2 | 70.0 |"
  paths = results.write_results(str(tmp_path), _summary(), 12, "eval_final")
  assert [p.rsplit(".", 1)[1] for p in paths] == ["md", "csv", "json"]
  rows = list(csv.DictReader(open(tmp_path / "eval_final.csv")))
  assert rows == [{"step": "12", "road": "90.0000", "veg": "80.5000", "bike": "10.2500", "mIoU": "60.2500",
                   "mIoU13": "70.0000", "pixel_acc": "95.0000"}]
  assert json.load(open(tmp_path / "eval_final.json"))["extra"] == {"mIoU13": 70.0}
  assert not list(tmp_path.glob("*.tmp"))


def test_history_replaces_rows_a_resumed_run_recomputes(tmp_path):
  s = _summary()
  for step in (2, 4, 6):
    results.append_history(str(tmp_path), s, step)
  s["mIoU"] = 1.0
  results.append_history(str(tmp_path), s, 4)  # killed after 6, resumed from the checkpoint at 2
  rows = list(csv.DictReader(io.StringIO((tmp_path / "eval_history.csv").read_text())))
  assert [(r["step"], r["mIoU"]) for r in rows] == [("2", "60.2500"), ("4", "1.0000")]


def test_predictions_are_palette_pngs_of_the_train_ids_and_panels_show_all_three(tmp_path):
  rng = np.random.default_rng(3)
  image = rng.normal(size=(6, 10, 3)).astype(np.float32)
  label = rng.integers(0, 19, (12, 20)).astype(np.int32)
  label[0, 0] = 255
  pred = rng.integers(0, 19, (12, 20)).astype(np.uint8)
  panels = visualize.write_predictions(str(tmp_path), [(image, label, pred)], labels.PALETTE_19, "imagenet")
  png = Image.open(tmp_path / "000_pred.png")
  assert png.mode == "P"
  np.testing.assert_array_equal(np.asarray(png), pred)  # indices are the train ids
  np.testing.assert_array_equal(np.asarray(png.convert("RGB")), labels.colorize(pred))
  assert panels.shape == (1, 6, 30, 3) and panels.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "000_panel.png")), panels[0])
  rows, cols = np.arange(6) * 12 // 6, np.arange(10) * 20 // 10
  np.testing.assert_array_equal(panels[0, :, 10:20], labels.colorize(label[rows][:, cols]))
  np.testing.assert_array_equal(panels[0, :, 20:], labels.colorize(pred[rows][:, cols]))
  np.testing.assert_array_equal(panels[0, 0, 10], [0, 0, 0])  # ignore is black


def test_thumbnails_keep_at_most_max_height_rows():
  panels = np.arange(2 * 600 * 900 * 3, dtype=np.uint32).reshape(2, 600, 900, 3).astype(np.uint8)
  small = visualize.thumbnails(panels, max_height=256)
  assert small.shape == (2, 200, 300, 3)  # stride 3
  np.testing.assert_array_equal(small, panels[:, ::3, ::3])
  assert visualize.thumbnails(panels[:, :100], 256).shape == (2, 100, 900, 3)
