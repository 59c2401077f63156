r"""Class Center Distance (FADA, Wang et al. ECCV 2020, eq. 9 and Fig. 4) of a checkpoint's features.

  python -m uda_jax.tools.ccd --config configs/fada.py:adv --workdir runs/fada/adv \
      [--domain source|target|both] [--max_images 500] [--output DIR] [--config.x=y ...]

For each class i, with mu_i the mean feature (class centre) and S_i the features labelled i,

  CCD(i) = 1/(K-1) * sum_{j != i} [ 1/|S_i| sum_{x in S_i} ||x - mu_i||^2 ] / ||mu_i - mu_j||^2,

the intra-class spread over the distance to each other centre (lower: tighter, better separated classes). The
features are the segmenter's 'features' output (ResNet layer4 / VGG fc7, stride 8) of the checkpoint --mode=eval
would evaluate (eval.checkpoint of WORKDIR, else the init_from weights); each feature pixel takes the ground-truth
train id at its centre (nearest downsampling; 255 and ids >= num_classes are ignored). One pass accumulates, per
class, the pixel count, the feature sum and the sum of squared norms in float64 (the mean squared distance to the
centre is E||x||^2 - ||mu||^2), so nothing is stored per pixel; each batch's float32 sums of squares are taken
about its own class means and shifted on the host, so small spreads survive the cancellation. K is the number
of classes present in the measured images; an absent class has no centre and gets NaN.

Domains: target = the evaluation split (data.eval / eval_split at data.eval_size), source = the labelled source
training split (data.source / source_split / source_label_map at data.source_size); each measured on its first
--max_images images. With --domain both, 'joint' is the CCD of the union of both feature sets (the paper's Fig. 4
pools 2,000 source and 2,000 target samples).

Writes ccd.md, ccd.csv, ccd.json and (with matplotlib: pip install -e '.[plot]') the bar chart ccd.png into
--output (default WORKDIR/ccd), and prints the markdown tables.
"""

import csv
import dataclasses
import io
import json
import os
import types

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np

from uda_jax import cli, methods
from uda_jax.errors import UserError

if __name__ == "__main__":  # the command's flags; tests import this module beside others that define --config
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/fada.py:adv",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory whose checkpoint (eval.checkpoint) is measured.")
  _DOMAIN = flags.DEFINE_enum("domain", "both", ["source", "target", "both"],
                              "target: the eval split; source: the labelled source training split; both "
                              "(and joint).")
  _MAX_IMAGES = flags.DEFINE_integer("max_images", 500, "Measure the first N images of each domain's split.")
  _OUTPUT = flags.DEFINE_string("output", None, "Output directory (default WORKDIR/ccd).")
  _DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
  flags.mark_flags_as_required(["config", "workdir"])

JOINT = "joint"
PLOT_HINT = "pip install -e '.[plot]'"


# ---------------------------------------------------------------------------------------------------------------
# The math.


@dataclasses.dataclass
class ClassStats:
  """Per-class sufficient statistics, float64: pixel count [K], feature sum [K, D], sum of ||x||^2 [K]."""
  count: np.ndarray
  feat_sum: np.ndarray
  sq_sum: np.ndarray

  @classmethod
  def zeros(cls, num_classes: int, dim: int) -> "ClassStats":
    return cls(np.zeros(num_classes), np.zeros((num_classes, dim)), np.zeros(num_classes))

  def add(self, count, feat_sum, centred) -> "ClassStats":
    """Adds a chunk's `class_sums`: its squared norms sum to centred + ||feat_sum||^2 / count per class."""
    count, feat_sum = np.asarray(count, np.float64), np.asarray(feat_sum, np.float64)
    self.count += count
    self.feat_sum += feat_sum
    self.sq_sum += np.asarray(centred, np.float64) + np.sum(feat_sum ** 2, axis=1) / np.maximum(count, 1)
    return self

  def __add__(self, other: "ClassStats") -> "ClassStats":
    return ClassStats(self.count + other.count, self.feat_sum + other.feat_sum, self.sq_sum + other.sq_sum)


def class_center_distance(count, feat_sum, sq_sum) -> np.ndarray:
  """CCD (eq. 9) per class [K] from per-class count [K], feature sum [K, D] and sum of squared norms [K].

  K - 1 and the sum over j count the classes present (count > 0); absent classes, and every class when fewer
  than two are present, get NaN. Two present classes with the same centre give inf.
  """
  count = np.asarray(count, np.float64)
  feat_sum = np.asarray(feat_sum, np.float64)
  sq_sum = np.asarray(sq_sum, np.float64)
  out = np.full(count.shape, np.nan)
  present = np.flatnonzero(count > 0)
  if len(present) < 2:
    return out
  n = count[present]
  mu = feat_sum[present] / n[:, None]
  # E||x - mu||^2 = E||x||^2 - ||mu||^2; clipped at 0 against rounding for (near-)constant features.
  spread = np.maximum(sq_sum[present] / n - np.sum(mu * mu, axis=1), 0.0)
  d2 = np.sum((mu[:, None, :] - mu[None, :, :]) ** 2, axis=-1)  # [P, P], direct differences: no cancellation
  off = ~np.eye(len(present), dtype=bool)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(off, spread[:, None] / np.where(off, d2, 1.0), 0.0)
  out[present] = ratio.sum(axis=1) / (len(present) - 1)
  return out


def downsample_labels(labels, size):
  """Nearest downsampling of label maps [..., H, W] to [..., h, w]: each cell takes the label at its centre,
  row floor((i + 1/2) H / h). Works on numpy and jax arrays (the indices are static)."""
  big_h, big_w = labels.shape[-2:]
  h, w = size
  if (big_h, big_w) == (h, w):
    return labels
  rows = ((2 * np.arange(h) + 1) * big_h) // (2 * h)
  cols = ((2 * np.arange(w) + 1) * big_w) // (2 * w)
  return labels[..., rows, :][..., cols]


def class_sums(features, labels, num_classes: int, mask=None, xp=np, reduce=None):
  """(count [K], feature sum [K, D], centred sum [K]) of features [B, h, w, D] with train-id labels [B, H, W]
  (downsampled to h x w); labels outside [0, num_classes) and examples with mask [B] False drop out. The centred
  sum is sum ||x - m||^2 about the chunk's own class means m, which keeps float32 sums free of the cancellation
  in E||x||^2 - ||mu||^2; `ClassStats.add` turns it into the sum of squared norms (in float64).
  xp = numpy (float64 on the host) or jax.numpy (float32 in a jitted step, `reduce` = the sum over devices)."""
  reduce = reduce or (lambda v: v)
  dim = features.shape[-1]
  labels = downsample_labels(labels, features.shape[1:3])
  valid = (labels >= 0) & (labels < num_classes)
  if mask is not None:
    valid = valid & xp.asarray(mask)[:, None, None]
  x = features.reshape(-1, dim)
  valid = valid.reshape(-1)
  index = xp.where(valid, labels.reshape(-1), 0)
  onehot = ((index[:, None] == xp.arange(num_classes)) & valid[:, None]).astype(x.dtype)
  if xp is np:
    feat_sum = onehot.T @ x
  else:  # full float32 on accelerators (no TF32 / bf16 passes)
    import jax  # pylint: disable=g-import-not-at-top
    feat_sum = xp.matmul(onehot.T, x, precision=jax.lax.Precision.HIGHEST)
  count, feat_sum = reduce((onehot.sum(axis=0), feat_sum))
  means = feat_sum / xp.maximum(count, 1)[:, None]
  deviation = xp.sum((x - means[index]) ** 2, axis=-1) * valid
  return count, feat_sum, reduce((onehot * deviation[:, None]).sum(axis=0))


def accumulate(stats: ClassStats | None, features, labels, num_classes: int, mask=None) -> ClassStats:
  """Adds one chunk (features [B, h, w, D], labels [B, H, W], optional mask [B]) to stats, in float64 on the
  host; stats None starts new ones. Returns the stats."""
  features = np.asarray(features, np.float64)
  if stats is None:
    stats = ClassStats.zeros(num_classes, features.shape[-1])
  return stats.add(*class_sums(features, np.asarray(labels), num_classes, mask))


# ---------------------------------------------------------------------------------------------------------------
# Measuring a checkpoint.


def source_data_config(data):
  """The data config with the labelled source training split in the eval role, at the source size."""
  if not data.source:
    raise UserError("data.source is empty: pass --config.data.source=DATASET (or a pseudo-label directory) "
                    "to measure the source domain, or --domain=target")
  return types.SimpleNamespace(**{**data.to_dict(), "eval": data.source, "eval_split": data.source_split,
                                  "eval_label_map": data.source_label_map, "eval_size": data.source_size,
                                  "eval_label_size": data.source_size})


def _make_step(config, mesh, seg_state):
  """Global batch -> (count, feature sum, squared-norm sum) of its unmasked labelled pixels, summed over devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from uda_jax.parallel import AXIS  # pylint: disable=g-import-not-at-top

  num_classes, apply_fn = config.model.num_classes, seg_state.apply_fn

  def body(variables, image, label, mask):
    features = apply_fn(variables, image, train=False)["features"]
    return class_sums(features, label, num_classes, mask, xp=jnp, reduce=lambda v: jax.lax.psum(v, AXIS))

  step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)), out_specs=P()))
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  return lambda batch: step(variables, batch["image"], batch["label"], batch["mask"])


def measure(data_cfg, step_fn, mesh, num_classes: int, max_images: int) -> tuple[ClassStats, int]:
  """(stats, images measured) over the first max_images images of data_cfg's eval split."""
  import jax  # pylint: disable=g-import-not-at-top
  from uda_jax import parallel  # pylint: disable=g-import-not-at-top
  from uda_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  limit = min(max_images, pipeline.num_eval_examples(data_cfg))
  global_batch = data_cfg.eval_batch_size
  local = global_batch // jax.process_count()
  batches = pipeline.eval_iterator(data_cfg, process_index=jax.process_index(), process_count=jax.process_count())
  stats = None
  try:
    for k, batch in zip(range(-(-limit // global_batch)), batches):  # range first: no batch is read past the last
      positions = k * global_batch + jax.process_index() * local + np.arange(local)
      batch = {"image": batch["image"], "label": batch["label"], "mask": batch["mask"] & (positions < limit)}
      sums = jax.device_get(step_fn(parallel.global_batch(batch, mesh)))
      if stats is None:
        stats = ClassStats.zeros(num_classes, sums[1].shape[-1])
      stats.add(*sums)
  finally:
    batches.close()  # stop the tf.data pipeline now rather than at interpreter exit
  return stats, limit


def run(config, workdir: str, domains=("source", "target"), max_images: int = 500, output: str | None = None):
  """Measures the CCD of the checkpoint in workdir on each domain; writes and prints the tables. Returns
  {domain: {'ccd': [K], 'count': [K], 'images': n}} (plus 'joint' when both domains are measured) and the step."""
  import jax  # pylint: disable=g-import-not-at-top
  from uda_jax import parallel, train  # pylint: disable=g-import-not-at-top
  from uda_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  if max_images < 1:
    raise UserError(f"--max_images={max_images}: give a positive number of images")
  names, _ = train._class_set(config)  # pylint: disable=protected-access
  num_classes = config.model.num_classes
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  data_cfgs = {d: source_data_config(config.data) if d == "source" else config.data for d in domains}
  for cfg in data_cfgs.values():  # a missing dataset fails before the model is built
    pipeline.num_eval_examples(cfg)
  states, step = train.restore_for_inference(config, workdir, mesh, "measure")
  step_fn = _make_step(config, mesh, methods.headline_segmenter(config, states))

  measured = {}
  for domain, cfg in data_cfgs.items():
    try:
      stats, n = measure(cfg, step_fn, mesh, num_classes, max_images)
    except UserError as e:  # the source split is read in the eval role: name the field the user sets
      raise UserError(str(e).replace("data.eval_size", "data.source_size") if domain == "source" else str(e)) from None
    measured[domain] = (stats, n)
    logging.info("%s: %d images, %d labelled feature pixels", domain, n, int(stats.count.sum()))
  if len(measured) == 2:
    measured[JOINT] = (measured["source"][0] + measured["target"][0], measured["source"][1] + measured["target"][1])

  results = {d: {"ccd": class_center_distance(s.count, s.feat_sum, s.sq_sum), "count": s.count, "images": n}
             for d, (s, n) in measured.items()}
  columns = list(config.eval.class_subset) or list(range(num_classes))
  tables = format_tables(results, names, columns, step)
  if jax.process_index() == 0:
    out = output or os.path.join(workdir, "ccd")
    paths = write_outputs(out, results, names, columns, step, tables)
    print(tables["md"], flush=True)
    logging.info("wrote %s", ", ".join(paths))
  return results, step


# ---------------------------------------------------------------------------------------------------------------
# Output.


def _mean(values: np.ndarray) -> float:
  values = values[~np.isnan(values)]
  return float(values.mean()) if len(values) else float("nan")


def format_tables(results: dict, names, columns, step: int) -> dict:
  """{'md': a markdown table per domain, 'csv': one row per domain, 'json': per-class values (NaN as null)}."""
  from uda_jax.data import labels  # pylint: disable=g-import-not-at-top
  heads = [labels.short_name(names[i]) for i in columns]
  fmt = lambda v: "-" if np.isnan(v) else f"{v:.3f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.1e}"
  md, rows, doc = [], [], {"step": step, "definition": "FADA eq. 9; mean over present classes", "domains": {}}
  for domain, r in results.items():
    values = r["ccd"][columns]
    mean = _mean(values)
    md += [f"**CCD {domain}** ({r['images']} images, checkpoint step {step}; lower is better)", "",
           "| " + " | ".join(heads + ["mean"]) + " |", "|" + "---|" * (len(heads) + 1),
           "| " + " | ".join(fmt(v) for v in [*values, mean]) + " |", ""]
    rows.append([domain, r["images"], step] + ["" if np.isnan(v) else f"{v:.6g}" for v in [*values, mean]])
    null = lambda v: None if np.isnan(v) else float(v)
    doc["domains"][domain] = {"images": r["images"], "mean": null(mean),
                              "per_class": {names[i]: null(r["ccd"][i]) for i in columns},
                              "pixels": {names[i]: int(r["count"][i]) for i in columns}}
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["domain", "images", "step"] + heads + ["mean"])
  writer.writerows(rows)
  return {"md": "\n".join(md), "csv": buf.getvalue(), "json": json.dumps(doc, indent=2)}


def write_outputs(out: str, results: dict, names, columns, step: int, tables: dict) -> list[str]:
  from uda_jax import files  # pylint: disable=g-import-not-at-top
  paths = []
  for ext in ("md", "csv", "json"):
    paths.append(os.path.join(out, f"ccd.{ext}"))
    files.write_atomic(paths[-1], tables[ext])
  png = plot(results, names, columns, step)
  if png is None:
    logging.warning("matplotlib is not installed: no ccd.png (the chart needs `%s`)", PLOT_HINT)
  else:
    paths.append(os.path.join(out, "ccd.png"))
    files.write_atomic(paths[-1], png)
  return paths


def plot(results: dict, names, columns, step: int) -> bytes | None:
  """PNG bytes of a grouped bar chart (classes on the x axis, one bar per domain), or None without matplotlib."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from uda_jax.data import labels  # pylint: disable=g-import-not-at-top
  heads = [labels.short_name(names[i]) for i in columns] + ["mean"]
  fig, ax = plt.subplots(figsize=(min(18.0, max(6.0, 2.0 + 0.35 * len(heads) * len(results))), 3.5))
  width = 0.8 / len(results)
  x = np.arange(len(heads))
  for k, (domain, r) in enumerate(results.items()):
    values = r["ccd"][columns]
    ax.bar(x + (k - (len(results) - 1) / 2) * width, [*values, _mean(values)], width, label=domain)
  ax.set_xticks(x, heads, rotation=45, ha="right")
  ax.set_ylabel("CCD (lower is better)")
  ax.set_title(f"Class Center Distance, checkpoint step {step}")
  ax.legend()
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  domains = ("source", "target") if _DOMAIN.value == "both" else (_DOMAIN.value,)
  try:
    cli.start_jax(_DISTRIBUTED.value)
    run(_CONFIG.value, _WORKDIR.value, domains, _MAX_IMAGES.value, _OUTPUT.value)
  except UserError as e:
    cli.exit_with_user_error(e)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
