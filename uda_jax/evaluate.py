"""Evaluation: confusion matrix on device, per-class IoU and mIoU, tables on disk."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.ops import resize_bilinear


def confusion_matrix(logits, labels, mask, num_classes: int):
  """[C, C] counts (rows ground truth, columns prediction) of one batch.

  Logits are upsampled to the label size (align_corners=True) before the argmax, as the official
  evaluation does; pixels labelled 255 (or any id >= num_classes) and padded examples (mask False) drop out.
  """
  pred = jnp.argmax(resize_bilinear(logits, labels.shape[1:3]), axis=-1)
  valid = (labels >= 0) & (labels < num_classes) & mask[:, None, None]
  index = jnp.where(valid, labels * num_classes + pred, num_classes * num_classes)
  counts = jnp.zeros(num_classes * num_classes + 1, jnp.int32).at[index.reshape(-1)].add(1)
  return counts[:-1].reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
  """IoU per class; NaN for a class absent from both ground truth and prediction."""
  cm = np.asarray(cm, np.float64)
  inter = np.diag(cm)
  union = cm.sum(0) + cm.sum(1) - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / union, np.nan)


def summarize(cm: np.ndarray, class_names, subset=None) -> dict:
  """{'per_class': {name: IoU %}, 'mIoU': %, 'pixel_acc': %}; mIoU is the NaN-mean over `subset` (all classes
  by default) as the official compute_iou.py computes it."""
  iou = iou_per_class(cm)
  idx = list(range(len(class_names))) if subset is None else list(subset)
  cm = np.asarray(cm, np.float64)
  return {
      "per_class": {class_names[i]: float(100 * iou[i]) for i in idx},
      "mIoU": float(100 * np.nanmean(iou[idx])) if np.isfinite(iou[idx]).any() else float("nan"),
      "pixel_acc": float(100 * np.trace(cm) / max(cm.sum(), 1)),
  }


def markdown_table(summary: dict, title: str = "") -> str:
  names = list(summary["per_class"])
  head = "| " + " | ".join(names + ["mIoU"]) + " |"
  rule = "|" + "---|" * (len(names) + 1)
  row = "| " + " | ".join(f"{summary['per_class'][n]:.1f}" for n in names) + f" | {summary['mIoU']:.1f} |"
  return "\n".join(([f"**{title}**", ""] if title else []) + [head, rule, row]) + "\n"


def write_results(workdir: str, summary: dict, step: int, name: str = "eval") -> tuple[str, str]:
  """Writes <name>.md and <name>.json into workdir atomically (write then rename)."""
  os.makedirs(workdir, exist_ok=True)
  paths = []
  for ext, text in (("md", markdown_table(summary, f"{name} at step {step}")),
                    ("json", json.dumps({"step": step, **summary}, indent=2))):
    path = os.path.join(workdir, f"{name}.{ext}")
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
    paths.append(path)
  return tuple(paths)


def run(seg_state, eval_step, batches, mesh) -> np.ndarray:
  """Accumulates the confusion matrix of every batch of `batches` (process-local numpy dicts)."""
  from uda_jax import parallel  # pylint: disable=g-import-not-at-top
  total = None
  for batch in batches:
    cm = eval_step(seg_state, parallel.global_batch(batch, mesh))
    total = cm if total is None else total + cm
  if total is None:
    raise ValueError("the evaluation split yielded no batches")
  return np.asarray(jax.device_get(total))
