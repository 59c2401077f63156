"""`python -m uda_jax.bench`: its printed fields (step time, images/s, FLOPs of the whole step, MFU against the
peak table in uda_jax/peak_flops.py or a given peak, peak memory, input time and wait) on a tiny network, on random
input and on the real toy pipeline; one-line errors; and --compare_torch: the PyTorch twin of the benchmarked step
(uda_jax/bench_torch.py) builds the same network as ours, runs the official iteration, and the CLI prints the
ratio; at tiny sizes."""

import glob
import math
import os
import re
import subprocess
import sys

import jax
import pytest

from uda_jax import bench, bench_torch, methods, peak_flops
from uda_jax.errors import UserError
from uda_jax.kernels import build

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
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == f"error: {bench_torch.MISSING}"
  assert "pip install -e '.[torch]'" in bench_torch.MISSING


def _bench_cli(*args):
  """`python -m uda_jax.bench` on the tiny network; (completed process, {printed field: value})."""
  out = subprocess.run(
      [sys.executable, "-m", "uda_jax.bench", "--config", "configs/adaptsegnet.py:toy", "--config.model.width=8",
       "--config.disc.channels=(8,8,8,8)", *args],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  printed = (line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
  return out, {k.strip(): v.strip() for k, v in printed}


def test_cli_prints_both_step_times_the_ratio_and_both_profiles(tmp_path):
  pytest.importorskip("torch")
  out, printed = _bench_cli("--size", "32,64", "--steps", "1", "--compare_torch", "--config.data.batch_size=1",
                            "--peak_tflops=0.05", f"--profile={tmp_path}", "--profile_steps=2")
  assert out.returncode == 0, out.stderr[-3000:]
  _check_profile_tables(out.stdout, tmp_path)
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


def _check_profile_tables(stdout, log_dir):
  """--profile's tables: the step's own module, each op of the trace found in the compiled HLO (no kind '?'),
  kinds that add up to the op time; PyTorch's op table; both traces written."""
  lines = stdout.splitlines()
  head = next(i for i, l in enumerate(lines) if l.startswith("profile: module "))
  module, n_ops, total = re.match(r"profile: module (\S+), (\d+) HLO ops, ([\d.]+) ms of op time per step",
                                  lines[head]).groups()
  assert "train_step" in module and int(n_ops) > 100
  kinds = {}
  for line in lines[head + 2:]:
    if line.split()[0] == "ms/step":
      break
    ms, _, kind = line.split()
    kinds[kind] = float(ms)
  assert "?" not in kinds and {"convolution", "dot"} & set(kinds), kinds
  assert sum(kinds.values()) == pytest.approx(float(total), abs=0.01 * len(kinds))
  top = lines[head + 3 + len(kinds):]
  top = top[:next(i for i, l in enumerate(top) if l.startswith("torch profile: "))]
  assert len(top) == min(25, int(n_ops)) and all(l.split()[4] in kinds for l in top)
  assert [float(l.split()[0]) for l in top] == sorted((float(l.split()[0]) for l in top), reverse=True)
  assert any("aten::" in l for l in lines) and (log_dir / "torch" / "torch_trace.json").stat().st_size > 0
  assert glob.glob(str(log_dir / "jax" / "**" / "*.xplane.pb"), recursive=True)


def test_cli_prints_every_field_on_the_real_input_pipeline(toy_data_dir):
  out, printed = _bench_cli(
      "--input=pipeline", "--steps", "2", "--peak_tflops=0.05", f"--config.data.data_dir={toy_data_dir}",
      "--config.data.source_size=(32,64)", "--config.data.target_size=(32,64)", "--config.data.batch_size=2",
      "--size", "999,999")  # ignored: the pipeline's images set the shapes
  assert out.returncode == 0, out.stderr[-3000:]
  assert printed["input"] == "pipeline" and printed["size"] == "32x64" and printed["batch"] == "2+2"
  step_s, images, gflops, achieved, mfu = (float(printed[k]) for k in (
      "step_s", "images_per_s", "gflops_per_step", "achieved_tflops_per_s", "mfu"))
  assert step_s > 0 and gflops > 0
  # Every rate follows from the printed step time, FLOPs and peak (6 significant digits printed).
  assert images == pytest.approx(4 / step_s, rel=1e-4)
  assert achieved == pytest.approx(gflops / step_s / 1e3, rel=1e-4)
  assert mfu == pytest.approx(achieved / 0.05, rel=1e-4) and printed["peak_source"] == "--peak_tflops"
  assert float(printed["peak_device_memory_gib"]) > 0 and "memory_analysis" in printed["peak_memory_source"]
  assert float(printed["gb_accessed_per_step"]) > 0
  assert float(printed["input_s"]) > 0 and math.isfinite(float(printed["input_wait_s"]))
  assert 0 <= float(printed["input_wait_fraction"]) < 1


def test_cli_mistakes_are_one_line_errors_with_exit_2():
  for args, message in ((["--precision=fp8"], "error: flag --precision=fp8: value should be one of <fp32|tf32|bf16>"),
                        (["--peak_tflops=0"], "error: flag --peak_tflops=0.0: --peak_tflops must be a positive number"),
                        (["--size", "32x64"], "error: --size='32x64': give H,W, e.g. 256,512"),
                        (["--profile=prof"], "error: --profile=prof traces steps that run: --steps 0 only compiles"),
                        (["--config.data.batch_size=-1"],
                         "error: data.batch_size=-1: give a positive number of images per step")):
    out, _ = _bench_cli(*args, "--steps", "0")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [message], (args, out.stderr[-2000:])
  out, _ = _bench_cli("--config.data.batch_size=-1", "--variant", "UDA_JAX_BN_KERNEL=0", "--steps", "1")
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: data.batch_size=-1: give a positive number of images per step"], out.stderr[-2000:]


def test_flops_per_step_count_every_device():
  """XLA's cost analysis of the shard_map step counts one device's share; the step's FLOPs are all of them. The
  count off the CPU (the step lowered again for one CPU device on one device's share) equals the direct one."""
  code = """
import jax, jax.numpy as jnp
from uda_jax import bench, methods, parallel, steps
from configs import adaptsegnet
config = adaptsegnet.get_config("toy")
config.data.batch_size = 2
method, mesh = methods.get(config.method), parallel.make_mesh()
batch = bench.random_batch(config, (32, 48), None, 2)
states = steps.init_states(config, method, mesh, {k: v.shape for k, v in batch.items()}, pretrained=False)
gb = parallel.global_batch(batch, mesh)
lowered = steps.make_train_step(method, config, mesh).lower(states, gb, jnp.int32(0))
direct = bench.step_flops(method, config, mesh, states, gb, lowered)
one = parallel.make_mesh(jax.devices()[:1])
single = bench.step_flops(method, config, one, steps.init_states(config, method, one, {k: v.shape for k, v in
                          batch.items()}, pretrained=False), parallel.global_batch(batch, one))
print(jax.device_count(), direct / bench.step_flops(method, config, mesh, states, gb), direct / single)
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert out.returncode == 0, out.stderr[-2000:]
  devices, reloaded, single = out.stdout.split()
  # 2 devices x one image each ~ 1 device x both images: the count is the whole global step (the replicated
  # optimizer update is counted once per device, a few per cent on this tiny network).
  assert devices == "2" and float(reloaded) == 1.0 and float(single) == pytest.approx(1.0, rel=0.05)


def test_bytes_accessed_show_batch_statistics_as_memory_traffic(monkeypatch):
  """The compile-only benchmark reports XLA's bytes accessed on the CPU: the same network with XLA's training-mode
  BatchNorm (its reductions and their gradients) moves more bytes than with frozen statistics, for ~equal FLOPs;
  the CPU BatchNorm kernel brings it below (its custom calls count as nothing)."""
  monkeypatch.setenv("UDA_JAX_BN_KERNEL", "0")
  got = {}
  for mode in ("frozen", "batch_stats"):
    c = _config()
    c.model.bn_mode = mode
    got[mode] = bench.benchmark(c, SIZE, 0)
    assert got[mode]["mfu"].startswith("n/a") and "step_s" not in got[mode]
  frozen, stats = got["frozen"], got["batch_stats"]
  assert 0 < frozen["gb_accessed_per_step"] < stats["gb_accessed_per_step"]
  assert stats["gflops_per_step"] == pytest.approx(frozen["gflops_per_step"], rel=0.05)
  assert not stats["cpu_bn_kernel"]
  if build.compiler() is not None:
    monkeypatch.setenv("UDA_JAX_BN_KERNEL", "1")
    kernel = bench.benchmark(c, SIZE, 0)
    assert kernel["cpu_bn_kernel"] and kernel["gb_accessed_per_step"] < stats["gb_accessed_per_step"]
    # the conv kernels' FLOPs, invisible to XLA's analysis, are still counted
    monkeypatch.setenv("UDA_JAX_CONV_KERNEL", "0")
    without = bench.benchmark(c, SIZE, 0)
    assert kernel["cpu_conv_kernel"] and not without["cpu_conv_kernel"]
    assert kernel["gflops_per_step"] == without["gflops_per_step"]


def test_peak_table_matches_device_kinds_and_precisions():
  assert peak_flops.lookup("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
  assert peak_flops.lookup("NVIDIA H100 PCIe")[0] == "H100 PCIe"
  assert peak_flops.lookup("NVIDIA H100 NVL")[0] == "H100 NVL"
  assert peak_flops.lookup("NVIDIA H200 NVL")[0] == "H200 NVL"
  assert peak_flops.lookup("NVIDIA GH200 480GB")[0] == "H200"
  assert peak_flops.lookup("NVIDIA A100-SXM4-40GB")[0] == "A100"
  assert peak_flops.lookup("NVIDIA A100 80GB PCIe")[0] == "A100"
  assert peak_flops.lookup("Tesla V100S-PCIE-32GB")[0] == "V100S PCIe"
  assert peak_flops.lookup("TPU v5 lite")[0] == "TPU v5e" and peak_flops.lookup("TPU v6 lite")[0] == "TPU v6e"
  assert peak_flops.lookup("TPU v5")[0] == "TPU v5p" and peak_flops.lookup("TPU v5p")[0] == "TPU v5p"
  assert peak_flops.lookup("TPU  v4")[0] == "TPU v4"
  for unknown in ("cpu", "TPU v4 lite", "TPU v3", "NVIDIA GeForce RTX 4090", "NVIDIA A10", ""):
    assert peak_flops.lookup(unknown) is None and peak_flops.peak_tflops(unknown, "bf16") is None, unknown
  for _, name, peaks in peak_flops.PEAKS:  # every GPU with bf16 tensor cores: bf16 > tf32 > fp32
    if not name.startswith("TPU") and "bf16" in peaks:
      assert peaks["fp32"] < peaks["tf32"] < peaks["bf16"], name
  for kind in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"):
    assert peak_flops.default_precision("float32", kind) == "tf32"
    assert peak_flops.default_precision("float32", kind, reduced_f32=False) == "fp32"  # precision 'highest'
    assert peak_flops.default_precision("bfloat16", kind) == "bf16"
  assert peak_flops.peak_tflops("NVIDIA H200", "bf16") == peak_flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
  assert peak_flops.default_precision("float32", "Tesla V100-SXM2-16GB") == "fp32"
  assert peak_flops.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None
  assert peak_flops.default_precision("float32", "TPU v4") == "bf16"  # one bf16 pass, JAX's default on TPU
  assert peak_flops.peak_tflops("TPU v4", "fp32") == peak_flops.peak_tflops("TPU v4", "bf16")
  assert peak_flops.default_precision("float64", "NVIDIA H100 80GB HBM3") == "fp64"
  assert peak_flops.peak_tflops("NVIDIA H100 80GB HBM3", "fp64") is None


def test_peak_resolution_says_where_the_peak_comes_from(monkeypatch):
  c = _config()
  assert bench.resolve_peak(c, given=2.5) == (2.5, "--peak_tflops")
  assert bench.resolve_peak(c) == (None, "no table entry for 'cpu'")  # this machine: a CPU
  h100 = "NVIDIA H100 80GB HBM3"
  peak = {p: peak_flops.peak_tflops(h100, p) for p in peak_flops.PRECISIONS}
  assert bench.resolve_peak(c, device_kind=h100) == (peak["tf32"], "table: H100 SXM tf32")  # float32: TF32
  assert bench.resolve_peak(c, precision="bf16", device_kind=h100) == (peak["bf16"], "table: H100 SXM bf16")
  with jax.default_matmul_precision("highest"):
    assert bench.resolve_peak(c, device_kind=h100) == (peak["fp32"], "table: H100 SXM fp32")
  monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
  assert bench.resolve_peak(c, device_kind=h100)[1] == "table: H100 SXM fp32"
  c.model.dtype = "bfloat16"
  assert bench.resolve_peak(c, device_kind=h100)[1] == "table: H100 SXM bf16"
  assert bench.resolve_peak(c, device_kind="Tesla V100-SXM2-16GB") == (None, "table: V100 SXM2 has no bf16 figure")


def test_benchmark_on_the_real_input_pipeline_reports_the_input_wait(tiny_toy_config):
  c = tiny_toy_config
  r = bench.benchmark(c, None, 2, input_mode="pipeline", peak=1e-3)
  assert r["input"] == "pipeline" and r["size"] == "32x64" and r["batch"] == "2+2"
  assert r["input_s"] > 0 and r["input_wait_s"] >= 0 and math.isfinite(r["input_wait_s"])
  assert r["mfu"] == pytest.approx(r["achieved_tflops_per_s"] / 1e-3)
  assert 0 < bench.measure_peak_tflops(n=256, repeats=2) < 1e4


def test_variants_are_compiled_under_their_switches_and_timed_against_the_default(tiny_toy_config, monkeypatch):
  seen = []
  make = bench.steps.make_train_step

  def recording(*args, **kwargs):  # the switches are read while the step is traced: record them then
    seen.append({k: os.environ.get(k) for k in ("UDA_JAX_BN_KERNEL", "UDA_JAX_NARROW_CONV_MATMUL")})
    return make(*args, **kwargs)

  monkeypatch.setattr(bench.steps, "make_train_step", recording)
  monkeypatch.setenv("UDA_JAX_NARROW_CONV_MATMUL", "1")
  variants = [bench.parse_variant("UDA_JAX_BN_KERNEL=0"),
              bench.parse_variant("UDA_JAX_NARROW_CONV_MATMUL=0,UDA_JAX_BN_KERNEL=1"),
              bench.parse_variant("xla_cpu_enable_concurrency_optimized_scheduler=false")]
  r = bench.compare_variants(tiny_toy_config, (32, 64), 2, variants)
  assert seen == [{"UDA_JAX_BN_KERNEL": None, "UDA_JAX_NARROW_CONV_MATMUL": "1"},
                  {"UDA_JAX_BN_KERNEL": "0", "UDA_JAX_NARROW_CONV_MATMUL": "1"},
                  {"UDA_JAX_BN_KERNEL": "1", "UDA_JAX_NARROW_CONV_MATMUL": "0"},
                  {"UDA_JAX_BN_KERNEL": None, "UDA_JAX_NARROW_CONV_MATMUL": "1"}]
  assert "UDA_JAX_BN_KERNEL" not in os.environ and os.environ["UDA_JAX_NARROW_CONV_MATMUL"] == "1"  # restored
  assert r["variant_2"] == "UDA_JAX_NARROW_CONV_MATMUL=0,UDA_JAX_BN_KERNEL=1"
  assert r["variant_3"] == "xla_cpu_enable_concurrency_optimized_scheduler=false"
  for j in (1, 2, 3):
    assert r[f"variant_{j}_step_s"] > 0
    assert r[f"variant_{j}_over_default"] == pytest.approx(r[f"variant_{j}_step_s"] / r["step_s"])


def test_xla_options_of_a_variant_reach_the_compiler(tiny_toy_config):
  assert bench.parse_variant("xla_cpu_a=true,xla_cpu_b=False,xla_cpu_c=512,xla_cpu_d=FAST_RUNTIME") == {
      "xla_cpu_a": True, "xla_cpu_b": False, "xla_cpu_c": 512, "xla_cpu_d": "FAST_RUNTIME"}
  # XLA itself rejects what it does not know: the option was handed to it, and the error names it
  for text, said in (("xla_cpu_no_such_option=true", "No such compile option: 'xla_cpu_no_such_option'"),
                     ("xla_cpu_enable_concurrency_optimized_scheduler=3", "not a valid bool value")):
    with pytest.raises(UserError, match=f"--variant {text}: .*{said}"):
      bench.compare_variants(tiny_toy_config, (32, 64), 1, [bench.parse_variant(text)])


def test_variant_mistakes_name_the_value():
  for text in ("UDA_JAX_BN_KERNEL=on", "BN_KERNEL=0", "UDA_JAX_BN_KERNEL", ",", "xla_cpu_x="):
    with pytest.raises(UserError, match="--variant"):
      bench.parse_variant(text)
  out, _ = _bench_cli("--variant", "UDA_JAX_BN_KERNEL=0", "--compare_torch", "--steps", "1")
  assert out.returncode == 2 and "--variant times steps on random inputs alone" in out.stderr
