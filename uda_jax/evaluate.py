"""Evaluation: prediction (single- or multi-scale, optionally flipped) and confusion matrix on device; per-class
IoU and mIoU on the host."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from uda_jax.ops import resize_bilinear
from uda_jax.parallel import AXIS


def nearest_resize(pred, size: Sequence[int]):
  """[B, h, w] ids -> [B, H, W] by PIL's NEAREST (source pixel floor((i + 0.5) * in / out))."""
  pick = lambda n_in, n_out: np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
  return pred[:, pick(pred.shape[1], size[0])][:, :, pick(pred.shape[2], size[1])]


def predict(forward: Callable, image, label_size: Sequence[int], scales: Sequence[float] = (1.0,),
            flip: bool = False, with_confidence: bool = False, upsample: str = "bilinear"):
  """Train-id prediction [B, Hl, Wl] of `forward` (image -> logits) at the label resolution.

  Single scale: argmax of the logits upsampled (align_corners=True) to the label size, as every official
  evaluation does. Otherwise FADA's multi_scale_inference: for each scale s the input is resized
  (align_corners=True) to (int(H*s), int(W*s)); the softmax of the upsampled logits is summed over scales and,
  with `flip`, over the horizontally flipped input (its prediction flipped back).
  with_confidence: returns (prediction, its softmax probability averaged over the scales and flips).
  upsample='nearest' (LSD-seg): argmax at the input size, the ids upsampled nearest (single scale only).
  """
  label_size = tuple(label_size)
  if upsample == "nearest":
    if tuple(scales) != (1.0,) or flip:
      raise ValueError("eval.upsample='nearest' is single-scale without flip")
    z = forward(image)
    pred = nearest_resize(jnp.argmax(z, axis=-1), label_size)
    conf = nearest_resize(jnp.max(jax.nn.softmax(z, axis=-1), axis=-1), label_size)
    return (pred, conf) if with_confidence else pred
  if upsample != "bilinear":
    raise ValueError(f"eval.upsample must be 'bilinear' or 'nearest', got {upsample!r}")
  if tuple(scales) == (1.0,) and not flip:
    logits = resize_bilinear(forward(image), label_size)
    pred = jnp.argmax(logits, axis=-1)
    return (pred, jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)) if with_confidence else pred
  h, w = image.shape[1:3]
  total = 0.0
  for s in scales:
    x = image if s == 1.0 else resize_bilinear(image, (int(h * s), int(w * s)))
    total += jax.nn.softmax(resize_bilinear(forward(x), label_size), axis=-1)
    if flip:  # align_corners resizing commutes with flipping, so flip the upsampled logits back
      total += jax.nn.softmax(resize_bilinear(forward(x[:, :, ::-1]), label_size)[:, :, ::-1], axis=-1)
  pred = jnp.argmax(total, axis=-1)
  return (pred, jnp.max(total, axis=-1) / (len(scales) * (2 if flip else 1))) if with_confidence else pred


def confusion_matrix(pred, labels, mask, num_classes: int):
  """[C, C] counts (rows ground truth, columns prediction) of one batch of train-id maps [B, H, W].

  Pixels labelled 255 (or any id >= num_classes) and padded examples (mask False) drop out.
  """
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


def _nanmean(values: np.ndarray) -> float:
  return float(100 * np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def summarize(cm: np.ndarray, class_names, subset=None, extra_means=None) -> dict:
  """{'per_class': {name: IoU %}, 'mIoU': %, 'extra': {name: %}, 'pixel_acc': %, 'confusion_matrix': counts}.

  mIoU is the NaN-mean over `subset` (all classes by default), as the official compute_iou.py computes it, and
  per_class lists those classes in class-set order (the papers' column order). `extra_means` ({name: class
  indices}) adds further means of the same matrix, e.g. SYNTHIA's 13-class mIoU* next to the 16-class mIoU.
  """
  iou = iou_per_class(cm)
  idx = list(range(len(class_names))) if subset is None else list(subset)
  counts = np.asarray(cm, np.int64).tolist()  # [true][predicted] pixels, so results files can be merged exactly
  cm = np.asarray(cm, np.float64)
  return {
      "per_class": {class_names[i]: float(100 * iou[i]) for i in idx},
      "mIoU": _nanmean(iou[idx]),
      "extra": {name: _nanmean(iou[list(ids)]) for name, ids in (extra_means or {}).items()},
      "pixel_acc": float(100 * np.trace(cm) / max(cm.sum(), 1)),
      "confusion_matrix": counts,
  }


def run(seg_states, eval_step, batches, mesh, num_samples: int = 0):
  """Accumulates the confusion matrix over `batches` (process-local numpy dicts with a 'mask').

  `seg_states` is one segmenter, or {name: segmenter} evaluated on the same batches in one pass over the data.
  Returns (cm, or {name: cm}, samples): samples are (image, label, prediction) numpy triples of the first
  `num_samples` unpadded examples this process evaluated (with one process: the first images of the split), the
  prediction being the first segmenter's.
  """
  from uda_jax import parallel  # pylint: disable=g-import-not-at-top
  many = isinstance(seg_states, dict)
  segs = seg_states if many else {"": seg_states}
  totals, samples = {}, []
  for batch in batches:
    global_batch = parallel.global_batch(batch, mesh)
    for i, (name, seg) in enumerate(segs.items()):
      out = eval_step(seg, global_batch)
      totals[name] = out["cm"] + totals[name] if name in totals else out["cm"]
      if i == 0 and len(samples) < num_samples:
        pred = np.asarray(multihost_utils.global_array_to_host_local_array(out["pred"], mesh, P(AXIS)))
        for j in np.flatnonzero(batch["mask"])[: num_samples - len(samples)]:
          samples.append((batch["image"][j], batch["label"][j], pred[j]))
  if not totals:
    raise ValueError("the evaluation split yielded no batches")
  cms = {name: np.asarray(jax.device_get(cm)) for name, cm in totals.items()}
  return (cms if many else cms[""]), samples
