"""The command line as a user runs it: `python -m uda_jax.main --config configs/adaptsegnet.py:toy ...`."""

import json
import os
import re
import subprocess
import sys

import jax
import pytest

from uda_jax import cli, parallel
from uda_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "adaptsegnet.py")


def _main(*args, timeout=900, env=None):
  return subprocess.run([sys.executable, "-m", "uda_jax.main", *args], capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def test_toy_trains_evaluates_and_checkpoints_end_to_end(toy_data_dir, tmp_path):
  workdir = str(tmp_path / "toy")
  small = [f"--config.data.data_dir={toy_data_dir}", "--config.train.num_steps=4", "--config.train.eval_every=2",
           "--config.train.checkpoint_every=2", "--config.train.log_every=2", "--config.model.width=8",
           "--config.disc.channels=(8,8,8,8)"]
  out = _main(f"--config={CONFIG}:toy", f"--workdir={workdir}", *small)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| road | sidewalk | building |" in out.stdout and "mIoU" in out.stdout
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert len(os.listdir(os.path.join(workdir, "best"))) == 1
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  with open(os.path.join(workdir, "eval_final.json")) as f:
    final = json.load(f)
  assert final["step"] == 4 and 0.0 <= final["mIoU"] <= 100.0
  with open(os.path.join(workdir, "eval_final.md")) as f:
    assert "| road |" in f.read()
  with open(os.path.join(workdir, "eval_final.csv")) as f:
    assert f.readline().startswith("step,road,sidewalk,building,")
  with open(os.path.join(workdir, "eval_history.csv")) as f:
    assert [line.split(",")[0] for line in f.read().splitlines()] == ["step", "2", "4"]
  # Colourised predictions of the first eval images: on disk and in TensorBoard.
  for name in ("step2", "step4", "eval_final"):
    files = sorted(os.listdir(os.path.join(workdir, "predictions", name)))
    assert files[:2] == ["000_panel.png", "000_pred.png"] and len(files) == 2 * 4
  assert _image_summaries(workdir) == {2: 4, 4: 4}

  # --mode=eval restores the latest checkpoint and reproduces the final evaluation exactly.
  out = _main(f"--config={CONFIG}:toy", f"--workdir={workdir}", "--mode=eval", "--config.eval.checkpoint=latest",
              *small)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "eval_latest_step4.json")) as f:
    assert json.load(f)["mIoU"] == final["mIoU"]


def _image_summaries(workdir):
  """{step: number of images} of the 'eval/predictions' summaries in workdir's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = {}
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag == "eval/predictions":
            found[event.step] = len(tf.make_ndarray(value.tensor)) - 2  # width, height, then the PNGs
  return found


def test_user_mistakes_get_one_line_errors_and_leave_no_workdir(tmp_path):
  workdir = tmp_path / "run"
  cases = [
      ([f"--config={CONFIG}:toyy"], "unknown preset(s) 'toyy'"),
      ([f"--config={CONFIG}:toy", "--config.train.num_stepz=3"], "unknown config key 'num_stepz'"),
      ([f"--config={CONFIG}", f"--config.data.data_dir={tmp_path / 'no_such_dir'}"],
       "python -m uda_jax.data.prepare gta5 --manual_dir"),
      ([f"--config={CONFIG}:toy", "--config.eval.scales=(0.7,-1.0)"], "eval.scales=(0.7, -1.0)"),
      ([f"--config={tmp_path / 'nope.py'}"], f"cannot load the config file: [Errno 2] No such file or directory: "
                                             f"'{tmp_path / 'nope.py'}'"),
      ([f"--config={CONFIG}:toy", "--config.data.batch_size=0"], "data.batch_size=0: give a positive number"),
      ([f"--config={CONFIG}:toy", "--distributed"], "JAX_COORDINATOR_ADDRESS is not: set it to HOST:PORT"),
  ]
  for args, message in cases:
    env = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"} if "--distributed" in args else {}
    out = _main(*args, f"--workdir={workdir}", timeout=300, env=env)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert message in out.stderr, (args, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, (args, out.stderr[-2000:])
    assert not workdir.exists(), args


def test_cluster_environment_and_batch_shares():
  assert cli.cluster_args({}) == {}
  assert cli.cluster_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
                           "JAX_PROCESS_ID": "3"}) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                                      "process_id": 3}
  for env, message in [({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS is not"),
                       ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
                        "JAX_PROCESS_ID=2 with JAX_NUM_PROCESSES=2"),
                       ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
                        "JAX_NUM_PROCESSES='two'")]:
    with pytest.raises(UserError, match=re.escape(message)):
      cli.cluster_args(env)


def test_global_batch_must_split_evenly_over_processes_and_devices(monkeypatch):
  mesh = parallel.make_mesh()
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(UserError, match=re.escape("data.batch_size=3 is not a multiple of the number of processes (2)")):
    parallel.check_batch_divisible(3, mesh, "data.batch_size")
  with pytest.raises(UserError, match=re.escape("data.batch_size=-2: give a positive number")):
    parallel.check_batch_divisible(-2, mesh, "data.batch_size")
  parallel.check_batch_divisible(4, mesh, "data.batch_size")


def test_a_failed_save_stops_the_run_promptly_with_one_line(toy_data_dir, tmp_path):
  """A full disk, simulated by a file-size limit that checkpoint data files exceed (EFBIG instead of ENOSPC)."""
  import resource  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  def full_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

  workdir = tmp_path / "full"
  args = [f"--config={CONFIG}:toy", f"--workdir={workdir}", f"--config.data.data_dir={toy_data_dir}",
          "--config.model.width=8", "--config.disc.channels=(8,8,8,8)", "--config.train.num_steps=30",
          "--config.train.checkpoint_every=2", "--config.train.eval_every=100", "--config.train.log_every=1"]
  out = subprocess.run([sys.executable, "-m", "uda_jax.main", *args], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, preexec_fn=full_disk)
  assert out.returncode == 1, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: saving to {workdir}/checkpoints failed (step ") and "File too large" in last, last
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert not [s for s in os.listdir(workdir / "checkpoints") if s.isdigit()]  # nothing half-written counts
  stopped_at = int(last.split("(step ")[1].split(")")[0])
  assert stopped_at <= 6, last  # promptly: the failure of the step-2 save stops the run within a few steps
