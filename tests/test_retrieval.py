"""Cross-domain retrieval (LSD-seg Sec. 5.4): |A_k|, |B_k| and mAP on hand-made descriptors, and the command
line on a toy checkpoint."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from uda_jax.errors import UserError
from uda_jax.tools import retrieval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "adaptsegnet.py")


def _average_precision(relevant_in_order) -> float:
  rel = np.asarray(relevant_in_order, float)
  return float(np.sum(rel * np.cumsum(rel) / np.arange(1, len(rel) + 1)) / rel.sum())


def test_hand_computed_ranking():
  # Ranked: relevant, not, relevant, not, not, relevant -> AP = (1/1 + 2/3 + 3/6) / 3 = 13/18.
  similarity = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
  relevant = np.array([1, 0, 1, 0, 0, 1], bool)
  hits, ap = retrieval.rank_statistics(similarity, relevant, [1, 2, 3, 6])
  np.testing.assert_allclose(hits, [[1, 1, 2, 3]])
  np.testing.assert_allclose(ap, [13 / 18])
  # The same ranking from descriptors: unit vectors at increasing angles from the query; scale does not matter.
  angles = np.linspace(0.1, 1.2, 6)
  pool = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([3, 1, 7, 2, 5, 0.5])[:, None]
  np.testing.assert_allclose(retrieval.cosine_similarity([[2.0, 0.0]], pool), [np.cos(angles)], atol=1e-12)
  np.testing.assert_allclose(retrieval.rank_statistics(retrieval.cosine_similarity([[2.0, 0.0]], pool), relevant,
                                                       [3])[1], [13 / 18])


def test_separated_domains_retrieve_no_cross_domain_items_and_the_lowest_map():
  rng = np.random.default_rng(0)
  n, dim = 5, 8
  source, target = np.eye(dim)[0], np.eye(dim)[1]
  noisy = lambda centre, m: centre + 0.01 * rng.normal(size=(m, dim))  # distinct: no ties
  pool = np.concatenate([noisy(source, n), noisy(target, n)])
  ks = [1, 3, 5, 7, 10]
  r = retrieval.cross_domain_retrieval(pool, np.arange(2 * n) >= n, noisy(source, 4), noisy(target, 3), ks)
  # Every same-domain item comes first: k - n cross-domain items once k passes the n of the own domain.
  np.testing.assert_allclose(r["A_k"], [0, 0, 0, 2, 5])
  np.testing.assert_allclose(r["B_k"], [0, 0, 0, 2, 5])
  # The lowest AP there is: the n relevant items at places n + 1 ... 2n.
  lowest = np.mean([j / (n + j) for j in range(1, n + 1)])
  assert r["mAP_source_to_target"] == pytest.approx(lowest) and r["mAP_target_to_source"] == pytest.approx(lowest)
  assert lowest < r["chance"]["mAP_source_to_target"]


def test_identical_descriptors_score_exactly_at_chance():
  """All similarities tie: the counts and APs are those of a random ranking, not of the pool's order (source
  first), averaged over every order of the pool."""
  n_source, n_target, ks = 2, 4, [1, 2, 3, 6]
  pool = np.ones((n_source + n_target, 5))
  r = retrieval.cross_domain_retrieval(pool, np.arange(6) >= n_source, np.ones((3, 5)), np.ones((2, 5)), ks)
  np.testing.assert_allclose(r["A_k"], np.array(ks) * n_target / 6)
  np.testing.assert_allclose(r["B_k"], np.array(ks) * n_source / 6)
  for direction, relevant in (("source_to_target", [0, 0, 1, 1, 1, 1]), ("target_to_source", [1, 1, 0, 0, 0, 0])):
    orders = set(itertools.permutations(relevant))
    want = np.mean([_average_precision(o) for o in orders])
    assert r[f"mAP_{direction}"] == pytest.approx(want) == r["chance"][f"mAP_{direction}"]
  np.testing.assert_allclose(r["chance"]["A_k"], r["A_k"])


def test_partial_ties_equal_the_mean_over_tie_orders():
  rng = np.random.default_rng(3)
  for _ in range(25):
    similarity = rng.integers(0, 3, 6).astype(float)  # a few groups of tied items
    relevant = rng.random(6) < 0.5
    relevant[rng.integers(6)] = True
    orders = [o for o in itertools.permutations(range(6)) if np.all(np.diff(similarity[list(o)]) <= 0)]
    ks = list(range(1, 7))
    hits, ap = retrieval.rank_statistics(similarity[None], relevant, ks)
    np.testing.assert_allclose(hits[0], np.mean([np.cumsum(relevant[list(o)])[np.array(ks) - 1] for o in orders], 0))
    assert ap[0] == pytest.approx(np.mean([_average_precision(relevant[list(o)]) for o in orders]))


def test_chunks_and_zero_descriptors():
  rng = np.random.default_rng(1)
  similarity = rng.normal(size=(11, 9))
  relevant = rng.random(9) < 0.4
  relevant[0] = True
  whole = retrieval.rank_statistics(similarity, relevant, [1, 4, 9])
  chunked = retrieval.rank_statistics(similarity, relevant, [1, 4, 9], chunk=4)
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)
  # A zero descriptor is at similarity 0 to everything (no NaN).
  np.testing.assert_array_equal(retrieval.cosine_similarity(np.zeros((1, 3)), np.eye(3)), np.zeros((1, 3)))
  with pytest.raises(ValueError, match=r"every k must be in 1..9"):
    retrieval.rank_statistics(similarity, relevant, [10])


def test_sizes_and_k_flags():
  assert retrieval.shared_sizes({"a:train": 3000, "b:train": 2975}, 1000, 1000) == (1000, 1000, None)
  pool, queries, note = retrieval.shared_sizes({"a:train": 64, "b:train": 50}, 1000, 1000)
  assert (pool, queries) == (25, 25)
  assert note == ("b:train has 50 images, fewer than --pool=1000 + --queries=1000: using 25 pool and 25 "
                  "query images per domain")
  assert retrieval.shared_sizes({"a:train": 10}, 30, 10)[:2] == (7, 3)
  with pytest.raises(UserError, match=r"^b:train has 1 image\(s\): the retrieval needs at least 2"):
    retrieval.shared_sizes({"a:train": 64, "b:train": 1}, 10, 10)
  with pytest.raises(UserError, match=r"--pool=0 --queries=5: give positive numbers"):
    retrieval.shared_sizes({"a:train": 64}, 0, 5)
  assert retrieval.neighbour_counts(None, 1000) == [1, 5, 10, 20, 50, 100, 200, 500, 1000]
  assert retrieval.neighbour_counts(None, 30) == [1, 5, 10, 20]
  assert retrieval.neighbour_counts(["10", "1", "10"], 8) == [1, 10]
  with pytest.raises(UserError, match=r"^--k=17 is larger than the pool \(16 images: 8 source \+ 8 target\)$"):
    retrieval.neighbour_counts(["1", "17"], 8)
  for bad in (["a"], ["0", "2"]):
    with pytest.raises(UserError, match=r"give positive integers"):
      retrieval.neighbour_counts(bad, 8)


def test_images_are_read_at_the_training_size(toy_config):
  data = toy_config.data
  data.source_size, data.source_aug.crop = None, (16, 32)  # crops of native images: whole images at the crop size
  data.target_size, data.eval_resize = (24, 48), "lanczos"
  source, target = (retrieval.role_data_config(data, role) for role in retrieval.ROLES)
  assert (source.eval, source.eval_split, source.eval_size, source.eval_label_map) == (
      "uda_toy/source", "train", (16, 32), data.source_label_map)
  assert (target.eval, target.eval_split, target.eval_size, target.eval_resize) == (
      "uda_toy/target", "train", (24, 48), "bicubic")
  data.target = ""
  with pytest.raises(UserError, match="data.target is empty"):
    retrieval.role_data_config(data, "target")


def test_cli_on_a_toy_checkpoint(tiny_toy_config, tmp_path):
  """The command on a checkpoint of the (tiny) toy network: the initial weights saved as a run would, which
  tests the tool without paying for a training step's compilation."""
  from uda_jax import checkpoint, methods, parallel, steps  # pylint: disable=g-import-not-at-top
  c, workdir = tiny_toy_config, tmp_path / "run"
  with pytest.raises(UserError, match=r"nothing to measure: .* holds no checkpoint and config.init_from is empty"):
    retrieval.run(c, str(workdir), pool=4, queries=2)
  with pytest.raises(UserError, match=r"^--k=9 is larger than the pool \(8 images: 4 source \+ 4 target\)$"):
    retrieval.run(c, str(workdir), pool=4, queries=2, ks=["9"])
  assert not workdir.exists()

  shapes = {"source_image": (1, 32, 64, 3), "source_label": (1, 32, 64), "target_image": (1, 32, 64, 3)}
  states = steps.init_states(c, methods.get(c.method), parallel.make_mesh(), shapes)
  ckpt = checkpoint.Checkpoints(str(workdir))
  ckpt.save(3, states)
  ckpt.save_if_best(3, states, 1.0)
  ckpt.close()

  small = [f"--config.data.data_dir={c.data.data_dir}", "--config.model.width=8", "--config.disc.channels=(8,8,8,8)",
           "--config.data.source_size=(32,64)", "--config.data.target_size=(32,64)", "--config.data.eval_size=(32,64)",
           "--config.data.eval_batch_size=8"]
  # 64 images per split (conftest's toy_data_dir) cannot hold 40 + 40: shared out as 32 + 32.
  out = subprocess.run([sys.executable, "-m", "uda_jax.tools.retrieval", f"--config={CONFIG}:toy",
                        f"--workdir={workdir}", *small, "--pool=40", "--queries=40", "--k=1,4,16,64"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "fewer than --pool=40 + --queries=40: using 32 pool and 32 query images per domain" in out.stderr
  assert "checkpoint step 3; pool 32 source + 32 target, queries 32 + 32" in out.stdout
  rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
  assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 4", "| 16", "| 64"]
  assert "mAP source->target " in out.stdout and "target->source " in out.stdout

  with open(workdir / "retrieval.json") as f:
    doc = json.load(f)
  assert doc["step"] == 3 and doc["k"] == [1, 4, 16, 64]
  assert doc["splits"] == {"source": "uda_toy/source:train", "target": "uda_toy/target:train"}
  assert doc["pool"] == doc["queries"] == {"source": 32, "target": 32} and doc["descriptor_dim"] > 0
  for name in ("A_k", "B_k"):
    assert all(0 <= v <= min(k, 32) for v, k in zip(doc[name], doc["k"])), doc[name]
    assert doc[name][-1] == pytest.approx(32)  # k = the whole pool: all 32 other-domain items
    assert doc["chance"][name] == pytest.approx([k / 2 for k in doc["k"]])
  for name in ("mAP_source_to_target", "mAP_target_to_source"):
    assert 0 < doc[name] <= 1
  with open(workdir / "retrieval.md") as f:
    assert f.read().strip() == out.stdout[out.stdout.index("**Cross-domain retrieval**"):].strip()
