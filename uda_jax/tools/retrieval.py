r"""Cross-domain retrieval (LSD-seg, Sankaranarayanan et al. CVPR 2018, Sec. 5.4 and Fig. 4) of a checkpoint.

  python -m uda_jax.tools.retrieval --config configs/lsdseg.py --workdir runs/lsdseg \
      [--pool 1000] [--queries 1000] [--k 1,5,10,...] [--output DIR] [--config.x=y ...]

Each image is described by the headline segmenter's 'features' output (FCN-8s fc7, DeepLab layer4), average
pooled over space (4096-d for FCN-8s), in evaluation mode. The pool X holds the first --pool images of the
source and of the target training split (data.source / source_split, data.target / target_split); the next
--queries images of each split are the query sets Q_S and Q_T, so queries and pool are disjoint. Images are
resized (bicubic, as the training stream) to data.{role}_size, or to data.{role}_aug.crop when the size is None,
with the config's normalisation and no augmentation. A split too small for both is shared out in the same
ratio, with a warning; both domains always get the same sizes.

For cosine-similarity k-NN lists from each query into X:
  |A_k| = mean over Q_S of the number of target images among the k nearest (chance: k * N_tgt / N),
  |B_k| = mean over Q_T of the number of source images among the k nearest,
  mAP S->T / T->S = mean over Q_S / Q_T of the average precision of the whole ranking of X, the relevant items
  being those of the other domain.
Higher means source and target are closer in feature space. Exactly equal similarities count as a random order:
every number is its expectation over the orders of the tied items (degenerate descriptors, e.g. all zero, then
score at chance rather than by their index in X). Costs O(Q N D) for the similarities and O(Q N log N) for the
rankings; the paper's 2000 queries x 2000 pool images of 4096-d take about 3 s on a 2-core CPU.

Prints the table and writes retrieval.md and retrieval.json into --output (default WORKDIR).
"""

import json
import os
import types

from absl import app, flags, logging
from ml_collections import config_flags
import numpy as np

from uda_jax import cli, methods
from uda_jax.errors import UserError

if __name__ == "__main__":  # the command's flags; tests import this module beside others that define --config
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lsdseg.py",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run directory whose checkpoint (eval.checkpoint) is measured.")
  _POOL = flags.DEFINE_integer("pool", 1000, "Pool images per domain (N_src = N_tgt): the first of each split.")
  _QUERIES = flags.DEFINE_integer("queries", 1000, "Query images per domain (|Q_S| = |Q_T|): the next ones.")
  _K = flags.DEFINE_list("k", None, "Neighbour counts of the table (default: 1,5,10,20,50,100,... up to the "
                         "pool size per domain).")
  _OUTPUT = flags.DEFINE_string("output", None, "Output directory (default WORKDIR).")
  _DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
  flags.mark_flags_as_required(["config", "workdir"])

ROLES = ("source", "target")
DEFAULT_KS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


# ---------------------------------------------------------------------------------------------------------------
# The math (numpy, float64).


def cosine_similarity(queries, pool) -> np.ndarray:
  """[Q, N] cosine similarities of descriptors [Q, D] and [N, D]; a zero descriptor is 0 to everything."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
  sim = unit(np.asarray(queries, np.float64)) @ unit(np.asarray(pool, np.float64)).T
  # Identical pool descriptors may differ in the last bits (the product's summation order can differ between
  # rows); 12 decimals keep them tied, far above float64 rounding and far below any real difference.
  return np.round(sim, 12)


def rank_statistics(similarity, relevant, ks, chunk: int = 256):
  """(hits [Q, len(ks)], average precision [Q]) of each query's ranking of the pool by decreasing similarity
  [Q, N]; hits = relevant items (relevant: bool [N]) among the k nearest. Tied items are in random order: both
  are expectations over it. A tie group of m items, r relevant, after s items of which c are relevant, puts a
  relevant item at its j-th place with probability r / m, and then expects c + 1 + (j - 1)(r - 1)/(m - 1)
  relevant items in the first s + j. Queries go in chunks of `chunk` rows to bound the [chunk, N] temporaries."""
  similarity = np.asarray(similarity, np.float64)
  relevant = np.asarray(relevant, bool)
  q, n = similarity.shape
  ks = np.asarray(ks, int)
  if relevant.shape != (n,) or not relevant.any():
    raise ValueError(f"relevant must be a bool [{n}] with at least one True item, got {relevant.shape}")
  if len(ks) and (ks.min() < 1 or ks.max() > n):
    raise ValueError(f"every k must be in 1..{n} (the pool size), got {ks.tolist()}")
  hits, ap = np.empty((q, len(ks))), np.empty(q)
  place = np.arange(n)
  for lo in range(0, q, chunk):
    sim = similarity[lo:lo + chunk]
    order = np.argsort(-sim, axis=1, kind="stable")
    sim = np.take_along_axis(sim, order, axis=1)
    rel = relevant[order]
    first = np.ones(sim.shape, bool)  # first item of its tie group
    first[:, 1:] = sim[:, 1:] != sim[:, :-1]
    last = np.ones(sim.shape, bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, place, 0), axis=1)  # group [start, end) of each place
    end = np.minimum.accumulate(np.where(last, place + 1, n)[:, ::-1], axis=1)[:, ::-1]
    cum = np.zeros((len(sim), n + 1))
    cum[:, 1:] = np.cumsum(rel, axis=1)
    before = np.take_along_axis(cum, start, axis=1)  # relevant items ranked above the group
    size, inside = end - start, np.take_along_axis(cum, end, axis=1) - before
    j = place - start + 1
    found = before + 1 + (j - 1) * (inside - 1) / np.maximum(size - 1, 1)
    ap[lo:lo + chunk] = np.sum(inside / size * found / (place + 1), axis=1) / relevant.sum()
    at = ks - 1  # the k-th place's group: all above it, and its share of the group's relevant items
    hits[lo:lo + chunk] = before[:, at] + (ks - start[:, at]) * inside[:, at] / size[:, at]
  return hits, ap


def cross_domain_retrieval(pool, pool_is_target, source_queries, target_queries, ks) -> dict:
  """|A_k|, |B_k| (per k), the two mAPs and what a random ranking would give, of descriptors: pool [N, D] with
  its domains pool_is_target bool [N], source_queries [Q_S, D], target_queries [Q_T, D]."""
  is_target = np.asarray(pool_is_target, bool)
  ks = np.asarray(ks, int)
  a, ap_s = rank_statistics(cosine_similarity(source_queries, pool), is_target, ks)
  b, ap_t = rank_statistics(cosine_similarity(target_queries, pool), ~is_target, ks)
  # A random ranking is one all-tied query: its expectations are the chance levels.
  chance = lambda relevant: rank_statistics(np.zeros((1, len(relevant))), relevant, ks)
  (chance_a,), (chance_map_s,) = chance(is_target)
  (chance_b,), (chance_map_t,) = chance(~is_target)
  return {"k": ks.tolist(), "A_k": a.mean(0).tolist(), "B_k": b.mean(0).tolist(),
          "mAP_source_to_target": float(ap_s.mean()), "mAP_target_to_source": float(ap_t.mean()),
          "chance": {"A_k": chance_a.tolist(), "B_k": chance_b.tolist(), "mAP_source_to_target": float(chance_map_s),
                     "mAP_target_to_source": float(chance_map_t)}}


# ---------------------------------------------------------------------------------------------------------------
# Sizes and flags.


def shared_sizes(available: dict, pool: int, queries: int) -> tuple[int, int, str | None]:
  """(pool, queries) per domain from {split name: images}; when the smallest split holds fewer than
  pool + queries, both shrink in their ratio and the third element says so (else None)."""
  if pool < 1 or queries < 1:
    raise UserError(f"--pool={pool} --queries={queries}: give positive numbers of images per domain")
  name, n = min(available.items(), key=lambda item: item[1])
  if pool + queries <= n:
    return pool, queries, None
  if n < 2:
    raise UserError(f"{name} has {n} image(s): the retrieval needs at least 2 per domain (a pool image "
                    "and a query)")
  p = min(max(n * pool // (pool + queries), 1), n - 1)
  q = n - p
  return p, q, (f"{name} has {n} images, fewer than --pool={pool} + --queries={queries}: using {p} "
                f"pool and {q} query images per domain")


def neighbour_counts(ks, pool: int) -> list[int]:
  """The sorted distinct --k values (strings or ints), each in 1..2 * pool; None: DEFAULT_KS up to pool."""
  if ks is None:
    return [k for k in DEFAULT_KS if k <= pool] or [1]
  try:
    values = sorted({int(k) for k in ks})
  except ValueError:
    raise UserError(f"--k={','.join(map(str, ks))}: give positive integers, e.g. --k=1,5,10") from None
  if not values or values[0] < 1:
    raise UserError(f"--k={','.join(map(str, ks))}: give positive integers, e.g. --k=1,5,10")
  if values[-1] > 2 * pool:
    raise UserError(f"--k={values[-1]} is larger than the pool ({2 * pool} images: {pool} source + {pool} target)")
  return values


def role_data_config(data, role: str):
  """The data config with the role's training split in the eval role: eval_iterator then reads it in order,
  unaugmented, at the training size (bicubic, as the training stream resizes)."""
  name = getattr(data, role, None)
  if not name:
    raise UserError(f"data.{role} is empty: the retrieval needs a source and a target training split")
  size = getattr(data, f"{role}_size", None)
  if not size:  # trained on crops of native-size images (LSD-seg): describe whole images at the crop size
    size = tuple(getattr(getattr(data, f"{role}_aug", None), "crop", None) or ()) or None
  label_map = data.source_label_map if role == "source" else data.eval_label_map  # labels are read, not used
  return types.SimpleNamespace(**{**data.to_dict(), "eval": name, "eval_split": getattr(data, f"{role}_split"),
                                  "eval_label_map": label_map, "eval_size": size, "eval_label_size": size,
                                  "eval_resize": "bicubic"})


# ---------------------------------------------------------------------------------------------------------------
# Descriptors of a checkpoint.


def _make_describe(mesh, seg_state):
  """Global image batch [B, H, W, 3] -> pooled features [B, D] float32 as a numpy array on every process (the
  k-NN needs the whole pool on the host)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from uda_jax.parallel import AXIS  # pylint: disable=g-import-not-at-top

  apply_fn = seg_state.apply_fn

  def body(variables, image):
    features = apply_fn(variables, image, train=False)["features"]
    return jnp.mean(features.astype(jnp.float32), axis=(1, 2))

  step = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS)))
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  return lambda image: np.asarray(multihost_utils.process_allgather(step(variables, image), tiled=True))


def describe(data_cfg, describe_fn, mesh, count: int, role: str) -> np.ndarray:
  """Descriptors [count, D] of the first count images of data_cfg's eval split (a role's training split)."""
  import jax  # pylint: disable=g-import-not-at-top
  from uda_jax import parallel  # pylint: disable=g-import-not-at-top
  from uda_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  global_batch = data_cfg.eval_batch_size
  batches = pipeline.eval_iterator(data_cfg, process_index=jax.process_index(), process_count=jax.process_count())
  out = []
  try:
    for _, batch in zip(range(-(-count // global_batch)), batches):  # range first: no batch is read past the last
      image = parallel.global_batch({"image": batch["image"]}, mesh)["image"]
      out.append(describe_fn(image))
  except UserError as e:  # the split is read in the eval role: name the field the user sets
    raise UserError(str(e).replace("data.eval_label_size", f"data.{role}_size")
                    .replace("data.eval_size", f"data.{role}_size")) from None
  finally:
    batches.close()  # stop the tf.data pipeline now rather than at interpreter exit
  return np.concatenate(out)[:count]  # the last batch's padding (repeats of image 0) drops out


def run(config, workdir: str, pool: int = 1000, queries: int = 1000, ks=None, output: str | None = None) -> dict:
  """Measures the retrieval of the checkpoint in workdir; writes and prints the table. Returns the results."""
  import jax  # pylint: disable=g-import-not-at-top
  from uda_jax import parallel, train  # pylint: disable=g-import-not-at-top
  from uda_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  cfgs = {role: role_data_config(config.data, role) for role in ROLES}
  # Splits first: a missing dataset or a bad size fails before the model is built.
  available = {f"{cfg.eval}:{cfg.eval_split}": pipeline.num_eval_examples(cfg) for cfg in cfgs.values()}
  pool, queries, note = shared_sizes(available, pool, queries)
  if note:
    logging.warning("%s", note)
  ks = neighbour_counts(ks, pool)
  states, step = train.restore_for_inference(config, workdir, mesh, "measure")
  describe_fn = _make_describe(mesh, methods.headline_segmenter(config, states))
  desc = {role: describe(cfg, describe_fn, mesh, pool + queries, role) for role, cfg in cfgs.items()}

  result = {"step": step, "splits": {role: f"{cfg.eval}:{cfg.eval_split}" for role, cfg in cfgs.items()},
            "image_size": {role: list(cfg.eval_size) if cfg.eval_size else None for role, cfg in cfgs.items()},
            "pool": {"source": pool, "target": pool}, "queries": {"source": queries, "target": queries},
            "descriptor_dim": int(desc["source"].shape[1]), "note": note}
  result.update(cross_domain_retrieval(np.concatenate([desc["source"][:pool], desc["target"][:pool]]),
                                       np.arange(2 * pool) >= pool, desc["source"][pool:], desc["target"][pool:], ks))
  if jax.process_index() == 0:
    from uda_jax import files  # pylint: disable=g-import-not-at-top
    out = output or workdir
    md = format_table(result)
    files.write_atomic(os.path.join(out, "retrieval.md"), md + "\n")
    files.write_atomic(os.path.join(out, "retrieval.json"), json.dumps(result, indent=2) + "\n")
    print(md, flush=True)
    logging.info("wrote %s", ", ".join(os.path.join(out, f"retrieval.{ext}") for ext in ("md", "json")))
  return result


def format_table(r: dict) -> str:
  """Markdown: the k table (chance = a random ranking's count) and the two mAPs."""
  chance = r["chance"]
  lines = [f"**Cross-domain retrieval** (LSD-seg Sec. 5.4; checkpoint step {r['step']}; pool {r['pool']['source']} "
           f"source + {r['pool']['target']} target, queries {r['queries']['source']} + {r['queries']['target']}, "
           f"{r['descriptor_dim']}-d descriptors, cosine k-NN; higher = domains closer)", "",
           "| k | \\|A_k\\| (source query: targets found) | \\|B_k\\| (target query: sources found) | "
           "random ranking (A / B) |", "|---|---|---|---|"]
  for k, a, b, ca, cb in zip(r["k"], r["A_k"], r["B_k"], chance["A_k"], chance["B_k"]):
    lines.append(f"| {k} | {a:.3f} | {b:.3f} | {ca:.3f} / {cb:.3f} |")
  lines += ["", f"mAP source->target {r['mAP_source_to_target']:.4f} (random ranking "
                f"{chance['mAP_source_to_target']:.4f}), target->source {r['mAP_target_to_source']:.4f} "
                f"(random ranking {chance['mAP_target_to_source']:.4f})"]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    cli.start_jax(_DISTRIBUTED.value)
    run(_CONFIG.value, _WORKDIR.value, _POOL.value, _QUERIES.value, _K.value, _OUTPUT.value)
  except UserError as e:
    cli.exit_with_user_error(e)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
