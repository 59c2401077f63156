"""`python -m uda_jax.bench --compare_torch`: the PyTorch twin of the benchmarked step (uda_jax/bench_torch.py)
builds the same network as ours, runs the official iteration, and the CLI prints the ratio; at tiny sizes."""

import math
import os
import subprocess
import sys

import jax
import pytest

from uda_jax import bench, bench_torch, methods, peak_flops
from uda_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (32, 64)


def _config(*presets):
  import adaptsegnet  # pylint: disable=g-import-not-at-top
  c = adaptsegnet.get_config(",".join(("toy", *presets)))
  c.model.width = 8
  c.disc.channels = (8, 8, 8, 8)
  c.data.batch_size = 1
  return c


def _our_param_count(c, batch):
  """Parameters of every state steps.init_states creates (segmenter + discriminators), from the shapes of the
  very function it jits: jax.eval_shape traces it without the ~30 s XLA compile of the initialisation."""
  shapes = {k: (1, *v.shape[1:]) for k, v in batch.items()}
  states = jax.eval_shape(lambda: methods.get(c.method).create_states(c, jax.random.key(c.seed), shapes))
  return sum(x.size for x in jax.tree.leaves({k: s.params for k, s in states.items()}))


@pytest.fixture
def one_thread():
  """In-process torch runs on one thread (fast on a busy machine), restored afterwards for other tests."""
  torch = pytest.importorskip("torch")
  saved = torch.get_num_threads()
  torch.set_num_threads(1)
  yield 1
  torch.set_num_threads(saved)


@pytest.mark.parametrize("variant", ["caffe_multi_level", "torchvision_single_level"])
def test_torch_step_runs_the_same_network_as_ours(variant, one_thread):
  c = _config()
  if variant == "torchvision_single_level":
    c.model.layout, c.model.multi_level = "torchvision", False
  batch = bench.random_batch(c, SIZE)
  r = bench_torch.benchmark(c, batch, 1, num_threads=one_thread)
  assert r["torch_step_s"] > 0 and r["torch_threads"] == 1
  # Segmenter + discriminators, BatchNorm scale / shift included on both sides.
  assert r["torch_params"] == _our_param_count(c, batch)
  levels = {"main", "aux"} if c.model.multi_level else {"main"}
  assert set(r["torch_first_losses"]) == ({f"seg_{l}" for l in levels} | {f"adv_{l}" for l in levels}
                                          | {f"loss_d_{l}" for l in levels})


def test_first_iteration_losses_are_finite_and_d_starts_at_log_2(one_thread):
  del one_thread
  c = _config()
  step = bench_torch.Step(c, bench.random_batch(c, SIZE))
  losses = step()
  assert all(math.isfinite(v) for v in losses.values()), losses
  # An untrained D outputs logits near 0: BCE against either label is about log 2.
  for level in ("main", "aux"):
    assert abs(losses[f"loss_d_{level}"] - math.log(2)) < 0.05, losses
  # Cross-entropy over 19 classes from a freshly initialised network: about log 19.
  assert abs(losses["seg_main"] - math.log(19)) < 0.5, losses
  assert all(math.isfinite(v) for v in step().values())  # the step after the optimizer updates, too


def test_unsupported_config_and_missing_torch_say_what_to_do(monkeypatch):
  pytest.importorskip("torch")
  c = _config("vgg16")
  with pytest.raises(UserError, match="compare_torch supports the ResNet DeepLab-v2 configs"):
    bench_torch.check(c)
  with pytest.raises(UserError, match="--steps 1 or more"):
    bench_torch.check(_config(), 0)
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(UserError, match=r"pip install -e '\.\[torch\]'"):
    bench_torch.check(_config())


def test_cli_without_torch_is_a_one_line_error():
  code = ("import sys, runpy; sys.modules['torch'] = None; "
          "sys.argv = ['bench', '--config', 'configs/adaptsegnet.py:toy', '--compare_torch']; "
          "runpy.run_module('uda_jax.bench', run_name='__main__')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == f"error: {bench_torch.MISSING}"
  assert "pip install -e '.[torch]'" in bench_torch.MISSING


def test_cli_prints_both_step_times_and_the_ratio():
  pytest.importorskip("torch")
  out = subprocess.run(
      [sys.executable, "-m", "uda_jax.bench", "--config", "configs/adaptsegnet.py:toy", "--size", "32,64",
       "--steps", "1", "--compare_torch", "--config.model.width=8", "--config.disc.channels=(8,8,8,8)",
       "--config.data.batch_size=1", "--peak_tflops=0.05"],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  printed = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
  printed = {k.strip(): v.strip() for k, v in printed.items()}
  for key in ("step_s", "torch_step_s", "ratio_ours_over_torch", "torch_threads"):
    assert key in printed, out.stdout
  ours, theirs, ratio = (float(printed[k]) for k in ("step_s", "torch_step_s", "ratio_ours_over_torch"))
  assert ours > 0 and theirs > 0 and ratio > 0
  assert int(printed["torch_threads"]) >= 1
  # MFU against the given peak, from the printed achieved rate; memory and input figures are there too.
  assert float(printed["mfu"]) == pytest.approx(float(printed["achieved_tflops_per_s"]) / 0.05, rel=1e-3)
  assert printed["peak_source"] == "--peak_tflops"
  assert float(printed["peak_device_memory_gib"]) > 0 and "memory_analysis" in printed["peak_memory_source"]
  assert float(printed["input_s"]) > 0 and 0 <= float(printed["input_wait_fraction"]) < 1


def test_peak_table_matches_device_kinds_and_precisions():
  assert peak_flops.lookup("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
  assert peak_flops.lookup("NVIDIA H100 PCIe")[0] == "H100 PCIe"
  assert peak_flops.lookup("NVIDIA A100-SXM4-40GB")[0] == "A100"
  assert peak_flops.lookup("TPU v5 lite")[0] == "TPU v5e" and peak_flops.lookup("TPU v6 lite")[0] == "TPU v6e"
  assert peak_flops.lookup("TPU v5")[0] == "TPU v5p" and peak_flops.lookup("cpu") is None
  for kind in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"):
    p = {x: peak_flops.peak_tflops(kind, x) for x in peak_flops.PRECISIONS}
    assert p["fp32"] < p["tf32"] < p["bf16"], kind
    assert peak_flops.default_precision("float32", kind) == "tf32"
  assert peak_flops.peak_tflops("NVIDIA H200", "bf16") == peak_flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
  assert peak_flops.default_precision("float32", "Tesla V100-SXM2-16GB") == "fp32"
  assert peak_flops.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None
  assert peak_flops.default_precision("float32", "TPU v4") == "bf16"  # one bf16 pass, JAX's default on TPU
  assert peak_flops.peak_tflops("TPU v4", "fp32") == peak_flops.peak_tflops("TPU v4", "bf16")
  assert peak_flops.default_precision("bfloat16", "cpu") == "bf16"


def test_benchmark_on_the_real_input_pipeline_reports_the_input_wait(tiny_toy_config):
  c = tiny_toy_config
  r = bench.benchmark(c, None, 2, input_mode="pipeline", peak=1e-3)
  assert r["input"] == "pipeline" and r["size"] == "32x64" and r["batch"] == "2+2"
  assert r["input_s"] > 0 and r["input_wait_s"] >= 0 and math.isfinite(r["input_wait_s"])
  assert r["mfu"] == pytest.approx(r["achieved_tflops_per_s"] / 1e-3)
  assert 0 < bench.measure_peak_tflops(n=256, repeats=2) < 1e4
