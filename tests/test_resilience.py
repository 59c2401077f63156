"""A run survives its accidents: kills between the two checkpoint managers' saves, corrupt checkpoints,
non-finite steps, a second run on the same workdir, and a resume with a changed config."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from uda_jax import checkpoint, results, train, workdir
from uda_jax.data import pipeline
from uda_jax.errors import RunStopped, UserError


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_same(a, b):
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)


def results_steps(run):
  return results.history_steps(run)


def _steps(run, kind="checkpoints"):
  return sorted(int(s) for s in os.listdir(os.path.join(run, kind)) if s.isdigit())


def test_killed_between_managers_or_with_a_corrupt_checkpoint_restarts_and_finishes(tiny_toy_config, tmp_path):
  straight, summary = train.train_and_evaluate(tiny_toy_config, str(tmp_path / "straight"))  # checkpoints 2, 4
  with open(tmp_path / "straight" / "eval_final.json") as f:
    written = json.load(f)
  assert written["step"] == 4 and abs(written["mIoU"] - summary["mIoU"]) < 1e-9
  assert set(written["per_class"]) == {"road", "sidewalk", "building", "fence", "pole", "sign", "vegetation",
                                       "terrain", "sky", "person", "car"}
  cm = np.asarray(written["confusion_matrix"])  # every labelled pixel of the 20 96x192 labels, by [true][pred]
  assert 0.99 * 20 * 96 * 192 < cm.sum() <= 20 * 96 * 192
  assert abs(100 * np.trace(cm) / cm.sum() - written["pixel_acc"]) < 1e-9
  run = str(tmp_path / "run")
  shutil.copytree(tmp_path / "straight", run)
  # Killed after best/ saved step 4 but before checkpoints/ did: the restart resumes at 2 and meets best/4.
  shutil.rmtree(os.path.join(run, "checkpoints", "4"))
  resumed, _ = train.train_and_evaluate(tiny_toy_config, run)
  _assert_same(straight, resumed)
  assert _steps(run) == [2, 4]
  # Killed after checkpoints/ saved step 4 (saved first) but before its evaluation was recorded: the restart
  # evaluates step 4 before anything else.
  for s in _steps(run, "best"):
    shutil.rmtree(os.path.join(run, "best", str(s)))
  with open(os.path.join(run, "eval_history.csv")) as f:
    rows = f.read().splitlines()
  with open(os.path.join(run, "eval_history.csv"), "w") as f:
    f.write("\n".join(r for r in rows if not r.startswith("4,")) + "\n")
  resumed, summary = train.train_and_evaluate(tiny_toy_config, run)
  _assert_same(straight, resumed)
  assert _steps(run, "best") in ([2], [4]) and results_steps(run) == {2, 4}

  # The newest checkpoint is corrupt (a file of it truncated): it is moved aside, the previous one is used.
  _truncate_biggest(os.path.join(run, "checkpoints", "4"))
  resumed, _ = train.train_and_evaluate(tiny_toy_config, run)
  _assert_same(straight, resumed)
  assert os.path.isdir(os.path.join(run, "corrupt", "checkpoints_4")) and _steps(run) == [2, 4]

  # Evaluation reads a workdir read-only (a live run may be saving there): it passes over a corrupt
  # checkpoint without moving it and leaves the live run's temporary save directory alone.
  in_flight = os.path.join(run, "checkpoints", "6.orbax-checkpoint-tmp-1234")
  os.makedirs(in_flight)
  _truncate_biggest(os.path.join(run, "checkpoints", "4"))
  tiny_toy_config.eval.checkpoint = "latest"
  _, step = train.restore_for_inference(tiny_toy_config, run, train.parallel.make_mesh(), "evaluate")
  assert step == 2 and os.path.isdir(in_flight) and _steps(run) == [2, 4]


def _truncate_biggest(directory):
  files = [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


def _nan_at(step_with_nan):
  """pipeline.train_iterator with a NaN source image at one global step."""
  real = pipeline.train_iterator

  def fake(data_cfg, *, start_step, **kwargs):
    for i, batch in enumerate(real(data_cfg, start_step=start_step, **kwargs)):
      if start_step + i == step_with_nan:
        batch = dict(batch, source_image=batch["source_image"].copy())
        batch["source_image"][0] = np.nan
      yield batch
  return fake


def test_a_non_finite_step_stops_the_run_and_never_reaches_a_checkpoint(tiny_toy_config, tmp_path, monkeypatch):
  tiny_toy_config.train.num_steps = 6
  tiny_toy_config.train.log_every = 1
  monkeypatch.setattr(pipeline, "train_iterator", _nan_at(4))  # the 5th step (global step index 4)
  run = str(tmp_path / "nan")
  # Under the XLA:CPU flags a NaN activation can be zeroed by ReLU (YNNPACK's max), so the losses may stay finite
  # (the CPU BatchNorm kernel's fused ReLU passes NaN on, as PyTorch's does); the BatchNorm statistics and the
  # updated params cannot.
  with pytest.raises(RunStopped, match=r"step 5 is non-finite in .*seg.batch_stats, seg.params[^;]*; its update was "
                                       r"not applied .*latest checkpoint: 4"):
    train.train_and_evaluate(tiny_toy_config, run)
  assert _steps(run) == [2, 4]  # step 6 never saved; step 4 is the newest and finite
  ckpt = checkpoint.Checkpoints(run)
  states, step = ckpt.restore(train.steps.init_states(tiny_toy_config, train.methods.get("adaptsegnet"),
                                                      train.parallel.make_mesh(),
                                                      {"source_image": (2, 32, 64, 3), "source_label": (2, 32, 64),
                                                       "target_image": (2, 32, 64, 3)}, pretrained=False))
  ckpt.close()
  assert step == 4 and all(np.isfinite(x).all() for x in _leaves(states) if x.dtype.kind == "f")

  # nan_policy=skip: the bad step is not applied and the run goes on; its result equals a run that never saw
  # that batch's update (the states after step 5 are those after step 4).
  tiny_toy_config.train.nan_policy = "skip"
  tiny_toy_config.train.num_steps = 5
  skipped, _ = train.train_and_evaluate(tiny_toy_config, str(tmp_path / "skip"))
  monkeypatch.setattr(pipeline, "train_iterator", _nan_at(-1))
  tiny_toy_config.train.num_steps = 4
  clean, _ = train.train_and_evaluate(tiny_toy_config, str(tmp_path / "clean"))
  assert int(skipped["seg"].step) == 4
  _assert_same(skipped, clean)


def test_one_live_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path):
  run = str(tmp_path / "run")
  with workdir.Lock(run):
    with pytest.raises(UserError, match=rf"{run} is in use by a live run \(pid {os.getpid()} on "):
      workdir.Lock(run).acquire()
  # A run that died leaves its line in .lock but no flock on it: the next run takes it over.
  with open(os.path.join(run, ".lock"), "w") as f:
    f.write("pid 1 on elsewhere since 2026-01-01 00:00:00\n")
  lock = workdir.Lock(run).acquire()
  with open(os.path.join(run, ".lock")) as f:
    assert f.read().startswith(f"pid {os.getpid()} ")
  lock.release()


def test_resume_with_a_changed_structure_names_the_fields_and_other_changes_are_recorded(tiny_toy_config, tmp_path):
  run = str(tmp_path / "run")
  tiny_toy_config.train.num_steps = 2
  train.train_and_evaluate(tiny_toy_config, run)
  tiny_toy_config.train.num_steps = 4
  tiny_toy_config.model.width = 4
  tiny_toy_config.loss.lambda_adv_main = 5e-4
  with pytest.raises(UserError) as e:
    train.train_and_evaluate(tiny_toy_config, run)
  message = str(e.value)
  assert "model.width: 8 -> 4" in message and "loss.lambda_adv_main: 0.001 -> 0.0005" in message
  assert "seg/batch_stats/backbone/bn1/mean: (8,) in the checkpoint, (4,) now" in message
  assert _steps(run) == [2]

  tiny_toy_config.model.width = 8  # the structure as saved; a changed loss weight is allowed and recorded
  train.train_and_evaluate(tiny_toy_config, run)
  history = sorted(os.listdir(os.path.join(run, "config_history")))
  assert len(history) == 2 and history[1].endswith("_step2.json")
  with open(os.path.join(run, "config_history", history[1])) as f:
    entry = json.load(f)
  assert entry["changes"]["loss.lambda_adv_main"] == [0.001, 0.0005]
  assert entry["changes"]["train.num_steps"] == [2, 4] and entry["step"] == 2

