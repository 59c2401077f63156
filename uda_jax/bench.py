"""Training-step benchmark: step time, images/s, XLA-counted FLOPs, MFU, peak device memory and input wait.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 720,1280 --target_size 512,1024   # e.g. an H100
  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 3 --measure_peak  # a CPU
  python -m uda_jax.bench --config configs/adaptsegnet.py:toy --input=pipeline --steps 5
  python -m uda_jax.bench --config configs/fada.py --size 720,1280 --target_size 512,1024 --steps 0

Runs the real jitted, data-parallel step of `config.method`, so any config and batch size: global batch
config.data.batch_size source + as many target images (--config.data.batch_size=8 for 8+8). By default
(--input=random) the inputs are seeded random arrays of --size / --target_size, so no dataset is needed;
--input=pipeline feeds the config's real training input (uda_jax.data.pipeline.train_iterator: tf.data,
decoding, augmentation, as the train loop does), and the batch shapes then come from the data (config.data
source_size / target_size and the augmentation), not from --size. The toy dataset is generated into
config.data.data_dir on first use. --steps 0 compiles only and reports the FLOPs and XLA's memory analysis (for
sizes too large to run on this machine); the timed fields are then absent and MFU is n/a.

Printed fields:
  step_s, images_per_s    median compute time of one step (the batch already on the devices, each step waited for)
  gflops_per_step         XLA's cost analysis of the lowered step, per device x devices (the whole global step)
  mfu                     gflops_per_step / step_s / (peak per device x devices). The peak comes from
                          uda_jax/peak_flops.py (V100 ... H200, TPU v4 ... v6e) at the precision model.dtype runs
                          at on the device (--precision to pick another), or from --peak_tflops, or, on a CPU,
                          from --measure_peak (the best of a few 2048x2048 float32 matmuls). n/a when none is known.
  gb_accessed_per_step    (CPU only) XLA's count of the bytes the compiled step reads and writes, all devices
  peak_device_memory_gib  device 0's peak_bytes_in_use where the runtime reports it (GPU, TPU), else XLA's memory
                          analysis of the step (CPU); peak_memory_source says which.
  host_memory_kept        whether malloc keeps freed host memory (uda_jax/host_memory.py; CPU, glibc): then
                          neither step here pays page faults for its buffers (--nocpu_keep_host_memory: default
                          malloc for both)
  input_s                 median host time per step to produce a batch and place it on the devices: next(iterator)
                          + parallel.global_batch (with random input, only the transfer: the arrays are ready)
  input_wait_s            time per step the devices sat waiting for input when batches are fed as the train loop
                          feeds them (the next batch is read while the previous step runs): fed step time - step_s,
                          and input_wait_fraction, its share of the fed step time. 0 when the host keeps up.

--compare_torch also times the official PyTorch iteration of the same network on the same inputs in this
process (uda_jax/bench_torch.py; needs the optional extra: pip install -e '.[torch]') and prints its median
step time and the ratio ours / torch:

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 3 --compare_torch

--variant NAME=V[,NAME=V] (repeatable) also compiles the step with those UDA_JAX_* switches set (0 or 1; they are
read when the step is traced) and those XLA compiler options (xla_*=value, e.g.
xla_cpu_enable_concurrency_optimized_scheduler=false; what XLA_FLAGS would set, but for this compile alone) and
times it alternately with the default step in the same process, printing each one's median (variant_N_step_s)
and its ratio to the default's. On a noisy machine that is the A/B to trust: on the
2-core VM of docs/performance.md single runs of one step spread by up to 25% between processes, while alternating
steps in one process repeat to a few per cent.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 256,512 --steps 4 \
      --variant UDA_JAX_NARROW_CONV_MATMUL=0,UDA_JAX_STRIDED_CONV_S2D=0

--profile DIR also traces --profile_steps steps (after the timed ones) into DIR/jax and prints the op time per
step by kind of work (convolutions, each fusion kind, each custom call's target: cuDNN, cuBLAS, uda_jax's CPU
kernels) and of the slowest HLO instructions with the JAX source path of each (uda_jax/profiling.py); with
--compare_torch, PyTorch's profiler table of its iteration too (trace in DIR/torch). On a GPU the times are the
kernels'; on a CPU they are XLA's thunks, which overlap when they run concurrently, and which XLA tags only under
--xla_cpu_enable_xprof_traceme (added to XLA_FLAGS for the run, for the jaxlib versions uda_jax.xla_flags knows).
The fields are printed before either profile is taken, so a profiler that fails cannot take them along.

  python -m uda_jax.bench --config configs/adaptsegnet.py --size 720,1280 --target_size 512,1024 \
      --compare_torch --profile /tmp/profile_asn

A mistake in the flags or the config (a bad --precision, a batch the devices do not divide, a missing dataset)
is one line on stderr and exit status 2.
"""

import itertools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from uda_jax import cli, methods, parallel, peak_flops, profiling, steps, switches, xla_flags
from uda_jax.kernels import batch_norm as bn_kernel
from uda_jax.kernels import conv_kernel
from uda_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:presets].", lock_config=True)
_SIZE = flags.DEFINE_string("size", "256,512", "H,W of the source (and, by default, target) images.")
_TARGET_SIZE = flags.DEFINE_string("target_size", "", "H,W of the target images if they differ.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step; 0 compiles only.", lower_bound=0)
_INPUT = flags.DEFINE_enum("input", "random", ["random", "pipeline"],
                           "random: seeded random arrays of --size; pipeline: the config's real training input "
                           "(tf.data, decoding, augmentation; shapes from the data, --size ignored).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU (overrides the table).")
_MEASURE_PEAK = flags.DEFINE_bool("measure_peak", False, "Measure the peak with a large float32 matmul (CPUs).")
_PRECISION = flags.DEFINE_enum("precision", None, list(peak_flops.PRECISIONS),
                               "Which peak of the table to use; default: what model.dtype runs at on the device.")
_COMPARE_TORCH = flags.DEFINE_bool(
    "compare_torch", False, "Also time the official PyTorch iteration of the same network on the same inputs "
    "(needs: pip install -e '.[torch]') and print the ratio of the step times.")
_PROFILE = flags.DEFINE_string(
    "profile", "", "Also trace --profile_steps steps into this directory and print where their time goes "
    "(uda_jax/profiling.py); with --compare_torch, PyTorch's profile of its step too.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 3, "Steps traced with --profile.", lower_bound=1)
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "NAME=V[,NAME=V]: also time the step compiled with these UDA_JAX_* switches (0|1) and XLA "
    "compiler options (xla_*=value), alternating with the default step in one process (see the module doc).")
flags.register_validator("peak_tflops", lambda v: v is None or v > 0, "--peak_tflops must be a positive number")


def random_batch(config, size, target_size=None, num_images=None):
  """The benchmark's inputs: `num_images` (default config.data.batch_size) random source images with labels
  (about 5% ignored, 255) and as many target images, NHWC; seeded, so every call returns the same batch."""
  b = num_images or config.data.batch_size
  rng = np.random.default_rng(0)
  label = rng.integers(0, config.model.num_classes, (b, *size)).astype(np.int32)
  label[rng.random((b, *size)) < 0.05] = 255
  return {"source_image": rng.normal(size=(b, *size, 3)).astype(np.float32), "source_label": label,
          "target_image": rng.normal(size=(b, *(target_size or size), 3)).astype(np.float32)}


def _batches(config, input_mode, size, target_size):
  """start_step -> iterator of this process's share of the global batch, as the train loop reads them."""
  if input_mode == "pipeline":
    from uda_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (tf.data only when asked)
    return lambda start: pipeline.train_iterator(config.data, seed=config.seed, start_step=start,
                                                 process_index=jax.process_index(),
                                                 process_count=jax.process_count())
  batch = random_batch(config, size, target_size, config.data.batch_size // jax.process_count())
  return lambda start: itertools.repeat(batch)


def benchmark(config, size, num_steps, target_size=None, input_mode="random", peak=None, profile=None,
              on_timed=None):
  """Compiles and times the step; returns the printed fields (and the profile table). `peak`: TFLOP/s per device
  (None: unknown).
  With input_mode="pipeline", `size` and `target_size` are ignored: the data sets them. `profile`: (directory,
  steps) to trace after the timing; the field 'profile' then holds profiling.summary's table. `on_timed(fields)`
  is called once the fields are known (timed, or compiled only at num_steps=0), before the profile: the CLI
  prints them there, so that a profiler that crashes or overruns a time limit cannot take them along."""
  b = config.data.batch_size
  mesh = _mesh(config)  # a bad batch size fails before any input is read
  batches = _batches(config, input_mode, size, target_size)
  first_batches = batches(0)
  batch = next(first_batches)  # sizes the states (and, from the data, the images)
  # Timed input comes from a fresh iterator (_time_fed): this one would have prefetched batches during the
  # compile, and a few steps drawn from its buffer would hide a slow pipeline.
  getattr(first_batches, "close", lambda: None)()
  size, target_size = batch["source_image"].shape[1:3], batch["target_image"].shape[1:3]
  target_size = None if target_size == size else target_size
  method, states, gb = _setup(config, mesh, batch)
  images = b if config.method == "source_only" else 2 * b  # source only never reads the target images
  t0 = time.perf_counter()
  lowered = steps.make_train_step(method, config, mesh).lower(states, gb, jnp.int32(0))
  compiled = lowered.compile()
  info = {"devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "method": config.method,
          "dtype": config.model.dtype,
          "size": f"{size[0]}x{size[1]}" + (f" + {target_size[0]}x{target_size[1]}" if target_size else ""),
          "batch": f"{b}+{b}" if images == 2 * b else f"{b}", "input": input_mode,
          "compile_s": time.perf_counter() - t0,
          "gflops_per_step": step_flops(method, config, mesh, states, gb, lowered) / 1e9,
          **_memory_analysis(compiled), **_bytes_accessed(compiled, mesh)}
  if jax.default_backend() == "cpu":
    info["cpu_bn_kernel"] = bn_kernel.enabled()  # training-mode BatchNorm as a C++ kernel (uda_jax.kernels)
    info["cpu_conv_kernel"] = conv_kernel.enabled()  # stride-1 convs as C++ kernels
  if num_steps == 0:
    info["mfu"] = "n/a (--steps 0 compiles only)"
    if on_timed:
      on_timed(dict(info))
    return info
  states, (step_s,) = _time_steps([compiled], states, gb, num_steps)
  states, input_s, fed_s = _time_fed(compiled, states, mesh, batches(1), num_steps)
  wait_s = max(0.0, fed_s - step_s)  # below 0 is timing noise: the host kept up
  achieved = info["gflops_per_step"] * 1e9 / step_s
  info.update({"xla_flags": os.environ.get("XLA_FLAGS", ""), "step_s": step_s, "images_per_s": images / step_s,
               "achieved_tflops_per_s": achieved / 1e12, "input_s": input_s, "input_wait_s": wait_s,
               "input_wait_fraction": wait_s / fed_s, **_runtime_peak_memory()})
  if peak:
    info["peak_tflops_per_device"] = peak
    info["mfu"] = achieved / (peak * 1e12 * jax.device_count())
  else:
    info["mfu"] = "n/a (pass --peak_tflops or --measure_peak)"
  if on_timed:
    on_timed(dict(info))
  if profile:
    log_dir, n = profile
    _, info["profile"] = profiling.profile(lambda st, i: compiled(st, gb, jnp.int32(i)), states, n, log_dir,
                                           compiled.as_text())
  return info


def parse_variant(text: str) -> dict:
  """'UDA_JAX_A=0,xla_cpu_b=true' -> {name: value}: UDA_JAX_* switches (0 or 1, read when the step is traced) and
  XLA compiler options (xla_*, passed to the step's compile; true / false and integers as such). A UserError
  names what is wrong."""
  out = {}
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    switch = name.startswith("UDA_JAX_") and value in ("0", "1")
    if not sep or not (switch or name.startswith("xla_") and value):
      raise UserError(f"--variant={text!r}: give UDA_JAX_NAME=0|1 or an XLA option xla_name=value, comma-separated "
                      f"(got {item!r})")
    out[name] = value if switch else _option_value(value)
  if not out:
    raise UserError(f"--variant={text!r}: give at least one UDA_JAX_NAME=0|1 or xla_name=value")
  return out


def _option_value(text: str):
  """An XLA compiler option's value as compile() takes it: 'true' / 'false' as bools, integers as ints."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return int(text)
  except ValueError:
    return text


def compare_variants(config, size, num_steps, variants, target_size=None) -> dict:
  """Median step time of the default step and of the step compiled under each variant (its UDA_JAX_* switches
  set in the environment while the step is traced, its xla_* options given to the compiler), timed in rounds
  that run each once (the same states and batch throughout), and each variant's ratio to the default."""
  mesh = _mesh(config)
  method, states, gb = _setup(config, mesh, next(_batches(config, "random", size, target_size)(0)))
  compiled = []
  for variant in [{}] + variants:
    env = {k: v for k, v in variant.items() if k.startswith("UDA_JAX_")}
    options = {k: v for k, v in variant.items() if k not in env}
    with switches.setting(env):
      lowered = steps.make_train_step(method, config, mesh).lower(states, gb, jnp.int32(0))
    try:
      compiled.append(lowered.compile(compiler_options=options or None))
    except jax.errors.JaxRuntimeError as e:
      if not options:
        raise
      # an unknown option or a bad value: XLA's message names it
      raise UserError(f"--variant {_label(variant)}: {(str(e).splitlines() or [repr(e)])[0]}") from None
  states, medians = _time_steps(compiled, states, gb, num_steps)
  info = {"step_s": medians[0]}
  for j, variant in enumerate(variants, 1):
    info[f"variant_{j}"] = _label(variant)
    info[f"variant_{j}_step_s"] = medians[j]
    info[f"variant_{j}_over_default"] = medians[j] / medians[0]
  return info


def _label(variant: dict) -> str:
  return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in variant.items())


def step_flops(method, config, mesh, states, gb, lowered=None) -> float:
  """FLOPs of one global step: XLA's cost analysis of the lowered step, which counts the program one device
  runs (the shard_map body) on its share of the batch, times the device count. Off the CPU the step is lowered
  once more for one CPU device with one device's share of the batch: a GPU's analysis counts the convolutions
  (cuDNN custom calls) as zero (on an H100 it saw 79 of ~6700 GFLOP). On a CPU the lowered count is ~8% above
  the compiled program's (elementwise work that fusion removes). Custom calls count as nothing there too, so
  the count is taken with the conv kernels off (BatchNorm's kernel: elementwise work, left out)."""
  if lowered is None or jax.default_backend() != "cpu" or conv_kernel.enabled():
    cpu_mesh = parallel.make_mesh(jax.devices("cpu")[:1])
    shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    share = lambda a: jax.ShapeDtypeStruct((a.shape[0] // mesh.size, *a.shape[1:]), a.dtype)
    with switches.setting({conv_kernel.ENV: "0"}):
      lowered = steps.make_train_step(method, config, cpu_mesh).lower(
          jax.tree.map(shape, states), jax.tree.map(share, gb), jnp.int32(0))
  return _cost(lowered, "flops") * mesh.size


def _cost(analysed, key: str) -> float:
  """One figure of XLA's cost analysis of a lowered or compiled program (NaN where it gives none)."""
  cost = analysed.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get(key, float("nan")))


def _mesh(config):
  """The devices' mesh, once config.data.batch_size is known to split evenly over it (else a UserError)."""
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  return mesh


def _setup(config, mesh, batch):
  """(method, train states, global batch) for `batch`, this process's share of the global batch."""
  method = methods.get(config.method)
  states = steps.init_states(config, method, mesh, {k: v.shape for k, v in batch.items()}, pretrained=False)
  return method, states, parallel.global_batch(batch, mesh)


def _time_steps(compiled, states, gb, num_steps):
  """(states, median time of each compiled step) on one device-resident batch: one warm-up step of each, then
  `num_steps` rounds that run each once, each step waited for."""
  for step in compiled:
    states, m = step(states, gb, jnp.int32(0))
    jax.block_until_ready(m)
  times = [[] for _ in compiled]
  for i in range(num_steps):
    for step, t in zip(compiled, times):
      t0 = time.perf_counter()
      states, m = step(states, gb, jnp.int32(i + 1))
      jax.block_until_ready(m)
      t.append(time.perf_counter() - t0)
  return states, [float(np.median(t)) for t in times]


def _time_fed(compiled, states, mesh, local, num_steps):
  """(states, median time of next(local) + global_batch, mean wall time per step) with batches fed as the train loop
  feeds them: dispatch is asynchronous, so the next batch is read while the device runs the previous step and
  a step waits for its input only when the host is slower than the device."""
  jax.block_until_ready(parallel.global_batch(next(local), mesh))  # untimed: a fresh pipeline's start-up
  input_times = []
  t_loop = time.perf_counter()
  for i in range(num_steps):
    t0 = time.perf_counter()
    gb = parallel.global_batch(next(local), mesh)
    input_times.append(time.perf_counter() - t0)
    states, m = compiled(states, gb, jnp.int32(num_steps + i + 1))
  jax.block_until_ready(m)
  getattr(local, "close", lambda: None)()
  return states, float(np.median(input_times)), (time.perf_counter() - t_loop) / num_steps


def _memory_analysis(compiled) -> dict:
  """XLA's memory analysis of the compiled step (per device): what it needs besides the runtime's own."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return {}
  if m is None:
    return {}
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {"peak_device_memory_gib": total / 2**30,
          "peak_memory_source": "XLA memory_analysis (arguments + outputs + temporaries - donated)"}


def _bytes_accessed(compiled, mesh) -> dict:
  """XLA's count of the bytes the compiled step reads and writes, per device x devices; on a CPU only, since a
  GPU's analysis counts its convolutions (cuDNN custom calls) as nothing. Beside the FLOPs it shows memory-bound
  work: how fusion split the elementwise passes (docs/performance.md, 'Where the rest of the CPU gap is'). Custom
  calls count as nothing here too, so the CPU BatchNorm kernel's own traffic is not in it."""
  if jax.default_backend() != "cpu":
    return {}
  accessed = _cost(compiled, "bytes accessed")
  return {"gb_accessed_per_step": accessed * mesh.size / 1e9} if math.isfinite(accessed) else {}


def _runtime_peak_memory() -> dict:
  """Device 0's peak allocation so far, where the runtime tracks it (GPU, TPU; a CPU's memory_stats is None);
  it then replaces the memory analysis."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" not in stats:
    return {}
  return {"peak_device_memory_gib": stats["peak_bytes_in_use"] / 2**30,
          "peak_memory_source": "device memory_stats (peak_bytes_in_use)"}


def measure_peak_tflops(n: int = 2048, repeats: int = 5) -> float:
  """Best float32 matmul throughput of one device, in TFLOP/s (a CPU's practical peak)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = min(_timed(f, x) for _ in range(repeats))
  return 2 * n**3 / best / 1e12


def _timed(f, x):
  t0 = time.perf_counter()
  f(x).block_until_ready()
  return time.perf_counter() - t0


def resolve_peak(config, given=None, measure=False, precision=None, device_kind=None):
  """(TFLOP/s per device or None, how it was obtained, or why there is none); device_kind: device 0's."""
  if given:
    return given, "--peak_tflops"
  if measure:
    return measure_peak_tflops(), "measured (float32 matmul)"
  kind = device_kind or jax.devices()[0].device_kind
  precision = precision or peak_flops.default_precision(config.model.dtype, kind, _reduced_f32())
  found = peak_flops.lookup(kind)
  if found is None:
    return None, f"no table entry for {kind!r}"
  peak = peak_flops.peak_tflops(kind, precision)
  return peak, (f"table: {found[0]} {precision}" if peak else f"table: {found[0]} has no {precision} figure")


def _reduced_f32() -> bool:
  """Whether float32 convolutions and matmuls may run at reduced precision. JAX's default matmul precision
  (jax_default_matmul_precision unset) lets XLA use TF32 tensor cores on Ampere and later GPUs and one bf16 pass
  on TPUs; 'highest' / 'float32' asks for full float32, and NVIDIA_TF32_OVERRIDE=0 turns TF32 off in cuBLAS and
  cuDNN."""
  setting = str(jax.config.jax_default_matmul_precision or "default").lower()
  return setting not in ("highest", "float32", "f32_f32_f32") and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"


def _parse_size(value, flag):
  try:
    h, w = (int(s) for s in value.split(","))
  except ValueError:
    raise UserError(f"--{flag}={value!r}: give H,W, e.g. 256,512") from None
  if h <= 0 or w <= 0:
    raise UserError(f"--{flag}={value!r}: both sides must be positive")
  return h, w


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PROFILE.value:  # CPU thunks tag their profiler events only with this flag, set before JAX starts
    xla_flags.apply(True, profiling.CPU_FLAGS)
  kept = cli.prepare_cpu()  # before the first device is touched; the malloc settings also serve --compare_torch
  config = _CONFIG.value
  try:
    size = _parse_size(_SIZE.value, "size")
    target = _parse_size(_TARGET_SIZE.value, "target_size") if _TARGET_SIZE.value else None
    variants = [parse_variant(v) for v in _VARIANTS.value]
    if variants and (_COMPARE_TORCH.value or _INPUT.value != "random" or _STEPS.value == 0 or _PROFILE.value):
      raise UserError("--variant times steps on random inputs alone: drop --compare_torch, --input, --profile "
                      "and --steps 0")
    if _PROFILE.value and _STEPS.value == 0:
      raise UserError(f"--profile={_PROFILE.value} traces steps that run: --steps 0 only compiles")
    if _COMPARE_TORCH.value:  # fail before the long part: a missing torch or an unsupported config
      if _INPUT.value != "random":
        raise UserError("--compare_torch times both steps on the same random inputs: use --input=random")
      from uda_jax import bench_torch  # pylint: disable=g-import-not-at-top
      bench_torch.check(config, _STEPS.value)
    if variants:
      _print(compare_variants(config, size, _STEPS.value, variants, target))
      return
    peak, source = resolve_peak(config, _PEAK_TFLOPS.value, _MEASURE_PEAK.value, _PRECISION.value)
    profile = (os.path.join(_PROFILE.value, "jax"), _PROFILE_STEPS.value) if _PROFILE.value else None
    extra = {"peak_source": source, "host_memory_kept": kept}
    r = benchmark(config, size, _STEPS.value, target, _INPUT.value, peak, profile,
                  on_timed=lambda fields: _print({**fields, **extra}))
  except UserError as e:
    cli.exit_with_user_error(e)
  tables = [r["profile"]] if "profile" in r else []
  if _COMPARE_TORCH.value:
    t = bench_torch.benchmark(config, random_batch(config, size, target), _STEPS.value,
                              profile=(os.path.join(_PROFILE.value, "torch"), _PROFILE_STEPS.value)
                              if _PROFILE.value else None,
                              on_timed=lambda t: _print(_torch_fields(r["step_s"], t)))
    tables += [t["torch_profile"]] if "torch_profile" in t else []
  for table in tables:  # after the fields, which scripts grep
    print(table, flush=True)


def _torch_fields(step_s: float, t: dict) -> dict:
  return {"torch": t["torch_version"], "torch_threads": t["torch_threads"], "torch_step_s": t["torch_step_s"],
          **({"torch_peak_memory_gib": t["torch_peak_memory_gib"]} if t["torch_peak_memory_gib"] else {}),
          "ratio_ours_over_torch": step_s / t["torch_step_s"]}


def _print(fields: dict):
  for k, v in fields.items():
    print(f"{k:>22}: {v:.6g}" if isinstance(v, float) else f"{k:>22}: {v}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=cli.parse_flags)
