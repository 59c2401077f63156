"""Input-pipeline benchmark: GTA5-size PNGs through decode -> resize -> normalise -> batch, images/s per core.

  python -m uda_jax.data.bench_input [--num_images 64] [--num_target 64] [--threads 1 2] [--steps 60]
                                     [--repeats 3] [--workdir DIR]

Writes synthetic frames in the real on-disk formats (GTA5: 1914x1052 RGB PNGs + palette label PNGs; Cityscapes:
2048x1024 leftImg8bit + gtFine labelIds) whose PNGs are about as large, and so as slow to decode, as real
ones; prepares them with the real builders (gta5, cityscapes_uda); then times the training input pipeline with
config_base's AdaptSegNet data fields, in one subprocess per thread count T pinned to T cores (CPU affinity, so
tf.data and TF's thread pools see T cores). Streams timed:
  pair        pipeline.train_iterator as training runs it: per step 1 GTA5 frame + label at 720x1280 and 1
              Cityscapes frame at 512x1024
  gta5        both halves on GTA5: 2 frames at 720x1280 per step, the label of one
  cityscapes  both halves on Cityscapes: 2 frames at 512x1024 per step, the label of one
Records come from the page cache once read: disk or network reads are not part of the figures. Without
--workdir everything lives in a temporary folder removed at exit.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TF loads: keep its start-up chatter out.

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from uda_jax import config_base  # pylint: disable=g-import-not-at-top
from uda_jax.data import fake_trees, pipeline, prepare  # pylint: disable=g-import-not-at-top

STREAMS = ("pair", "gta5", "cityscapes")
_RESULT_TAG = "BENCH_INPUT_RESULT "
_STAMP_VERSION = 1  # Bump when the frames change, so that a --workdir written before is rebuilt.


def machine() -> str:
  model = "unknown CPU"
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{model}, {len(os.sched_getaffinity(0))} cores available (os.cpu_count() = {os.cpu_count()})"


def data_config(data_dir: str, preset: str | None = None):
  """The official AdaptSegNet data fields (GTA5 -> Cityscapes, 720x1280 + 512x1024, batch 1 + 1, caffe_bgr),
  with one of config_base.AUGMENT_PRESETS applied if `preset` names it."""
  c = config_base.base_config()
  data = (config_base.AUGMENT_PRESETS[preset](c) if preset else c).data
  data.data_dir = data_dir
  data.auto_prepare = False
  return data


# ---------------------------------------------------------------------------------------------------------------
# Frames and datasets.


def make_datasets(workdir: Path, num_gta5: int, num_cityscapes: int, gta5_size, cityscapes_size) -> dict:
  """Writes the frames to workdir/manual/{gta5,cityscapes}, prepares them into workdir/tfds; returns stats.

  A workdir holding the same request from an earlier run is reused as it is.
  """
  manual, data_dir = workdir / "manual", workdir / "tfds"
  stamp_path = workdir / "bench_input.json"
  stamp = {"version": _STAMP_VERSION, "gta5": [num_gta5, *gta5_size], "cityscapes": [num_cityscapes, *cityscapes_size]}
  reused = stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
  times = {"write_s": None, "prepare_gta5_s": None, "prepare_cityscapes_s": None}
  if not reused:
    for folder in (manual, data_dir):
      shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    fake_trees.write_gta5_tree(manual / "gta5", num_gta5, gta5_size)
    fake_trees.write_cityscapes_tree(manual / "cityscapes", num_cityscapes, cityscapes_size)
    times["write_s"] = time.perf_counter() - t0
    tfds.disable_progress_bar()  # Its bars would bury the report.
    for name, folder in (("gta5", "gta5"), ("cityscapes_uda", "cityscapes")):
      t0 = time.perf_counter()
      prepare.prepare(name, str(manual / folder), str(data_dir))
      times[f"prepare_{folder}_s"] = time.perf_counter() - t0
    stamp_path.write_text(json.dumps(stamp))
  mb = lambda paths: float(np.mean([p.stat().st_size for p in paths])) / 1e6
  gta5_images = sorted((manual / "gta5" / "images").glob("*.png"))
  gta5_labels = sorted((manual / "gta5" / "labels").glob("*.png"))
  city_images = sorted((manual / "cityscapes" / "leftImg8bit" / "train").glob("*/*.png"))
  city_labels = sorted((manual / "cityscapes" / "gtFine" / "train").glob("*/*.png"))
  return {"manual_dir": str(manual), "data_dir": str(data_dir), "reused": reused, **times,
          "gta5": {"n": len(gta5_images), "size": list(gta5_size), "image_mb": mb(gta5_images),
                   "label_mb": mb(gta5_labels)},
          "cityscapes": {"n": len(city_images), "size": list(cityscapes_size), "image_mb": mb(city_images),
                         "label_mb": mb(city_labels)}}


# ---------------------------------------------------------------------------------------------------------------
# Timing (runs in the pinned subprocess).


def stream_config(data_dir: str, stream: str, preset: str | None = None):
  """The data config of one stream: official, or with both halves on one dataset for the per-dataset figures.

  Both halves on one dataset keep to the public train_iterator: a 'gta5' step is 2 GTA5 frames at 720x1280
  (the label decoded, resized and mapped for one of them), a 'cityscapes' step 2 Cityscapes frames at 512x1024
  (label for one).
  """
  data = data_config(data_dir, preset)
  if stream == "gta5":
    data.target, data.target_split, data.target_size = data.source, data.source_split, data.source_size
  elif stream == "cityscapes":
    data.source, data.source_split, data.source_size = data.target, data.target_split, data.target_size
  return data


def time_stream(data_dir: str, stream: str, steps: int, warmup: int, preset: str | None = None) -> dict:
  """Steady-state rate of one stream: `warmup` batches (thread start, buffers filling), then `steps` timed."""
  data_cfg = stream_config(data_dir, stream, preset)
  iterator = pipeline.train_iterator(data_cfg, seed=0, start_step=0)
  per_step = 2 * data_cfg.batch_size
  batch = next(iterator)
  shapes = {k: list(v.shape) for k, v in batch.items()}
  for _ in range(max(warmup - 1, 0)):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  del iterator  # Stops its tf.data threads before the next stream is timed.
  gc.collect()
  return {"steps_per_s": steps / wall, "images_per_s": steps * per_step / wall,
          "cpu_ms_per_image": 1e3 * cpu / (steps * per_step), "shapes": shapes}


def _worker(spec: dict) -> None:
  threads = spec["threads"]
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  out = {stream: time_stream(spec["data_dir"], stream, spec["steps"], spec["warmup"], spec.get("preset"))
         for stream in spec["streams"]}
  print(_RESULT_TAG + json.dumps(out), flush=True)


def run_pinned(threads: int, spec: dict) -> dict:
  """Times spec's streams in a fresh process pinned to `threads` cores (all cores if fewer are available)."""
  available = sorted(os.sched_getaffinity(0))
  cpus = available[:threads]
  env = dict(os.environ, TF_NUM_INTEROP_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads))
  proc = subprocess.run(
      [sys.executable, "-m", "uda_jax.data.bench_input", "--worker", json.dumps({**spec, "threads": threads})],
      env=env, capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus), check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT_TAG)]
  if proc.returncode or not lines:
    raise RuntimeError(f"benchmark worker (threads={threads}) failed:\n{proc.stderr[-3000:]}")
  result = json.loads(lines[-1][len(_RESULT_TAG):])
  for r in result.values():
    r["cores"] = len(cpus)
  return result


# ---------------------------------------------------------------------------------------------------------------
# Driver.


def _size(text: str) -> tuple[int, int]:
  h, w = (int(s) for s in text.split(","))
  return h, w


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m uda_jax.data.bench_input", description=__doc__.splitlines()[0])
  p.add_argument("--num_images", type=int, default=64, help="GTA5 frames to write")
  p.add_argument("--num_target", type=int, default=None, help="Cityscapes train frames (default: --num_images)")
  p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread (= core) counts to time")
  p.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
  p.add_argument("--steps", type=int, default=60, help="timed steps per stream")
  p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
  p.add_argument("--repeats", type=int, default=3, help="runs per thread count; median and best are reported")
  p.add_argument("--preset", choices=sorted(config_base.AUGMENT_PRESETS), default=None,
                 help="time the input of an augmentation preset (e.g. fada_adv_aug) instead of the official one")
  p.add_argument("--workdir", default=None, help="keep frames and prepared data here (default: a temp dir)")
  p.add_argument("--size", type=_size, default=None, help="H,W of every written frame (for tests)")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  return p


def main(argv: list[str] | None = None) -> dict:
  """Runs the benchmark, prints the report; returns {'machine', 'command', 'frames', 'rows'}."""
  args = _parser().parse_args(argv)
  if args.worker:
    _worker(json.loads(args.worker))
    return {}
  command = "python -m uda_jax.data.bench_input " + " ".join(argv if argv is not None else sys.argv[1:])
  print(f"machine: {machine()}\ncommand: {command.strip()}", flush=True)
  workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_input_"))
  try:
    frames = make_datasets(workdir, args.num_images, args.num_target or args.num_images,
                           args.size or fake_trees.GTA5_SIZE, args.size or fake_trees.CITYSCAPES_SIZE)
    print(_describe_frames(frames), flush=True)
    spec = {"data_dir": frames["data_dir"], "streams": args.streams, "steps": args.steps, "warmup": args.warmup,
            "preset": args.preset}
    runs = {t: [] for t in args.threads}
    for _ in range(args.repeats):  # Interleaved, so that a burst of load elsewhere hits every setting alike.
      for t in args.threads:
        runs[t].append(run_pinned(t, spec))
    rows = [_summarise(t, stream, [r[stream] for r in runs[t]]) for t in args.threads for stream in args.streams]
    print(_table(rows, args), flush=True)
    return {"machine": machine(), "command": command, "frames": frames, "rows": rows}
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


def _describe_frames(f: dict) -> str:
  g, c = f["gta5"], f["cityscapes"]
  lines = [f"frames: {g['n']} GTA5 {g['size'][1]}x{g['size'][0]} (PNG mean {g['image_mb']:.2f} MB, palette labels "
           f"{1e3 * g['label_mb']:.0f} KB), {c['n']} Cityscapes {c['size'][1]}x{c['size'][0]} (PNG mean "
           f"{c['image_mb']:.2f} MB, labelIds {1e3 * c['label_mb']:.0f} KB)"]
  if f["reused"]:
    lines.append(f"reused the frames and prepared datasets in {Path(f['data_dir']).parent}")
  else:
    lines.append(f"written in {f['write_s']:.0f} s; prepared: gta5 {f['prepare_gta5_s']:.0f} s, cityscapes_uda "
                 f"{f['prepare_cityscapes_s']:.0f} s")
  return "\n".join(lines)


def _summarise(threads: int, stream: str, runs: list[dict]) -> dict:
  rate = [r["images_per_s"] for r in runs]
  cores = runs[0]["cores"]
  return {"threads": threads, "cores": cores, "stream": stream, "runs": len(runs), "shapes": runs[0]["shapes"],
          "images_per_s": float(np.median(rate)), "images_per_s_best": float(np.max(rate)),
          "steps_per_s": float(np.median([r["steps_per_s"] for r in runs])),
          "images_per_s_per_core": float(np.median(rate)) / cores,
          "cpu_ms_per_image": float(np.median([r["cpu_ms_per_image"] for r in runs]))}


_LABELS = {"pair": "gta5 + cityscapes (train)", "gta5": "gta5 + gta5", "cityscapes": "cityscapes + cityscapes"}


def _table(rows: list[dict], args) -> str:
  source = f"preset {args.preset}" if args.preset else "official data config (config_base)"
  lines = [f"{source}: batch 1 + 1, caffe_bgr; {args.steps} timed steps after "
           f"{args.warmup} warm-up; median (best) of {args.repeats} run(s)",
           f"{'threads':>7} {'cores':>5}  {'stream':<26}{'steps/s':>9}{'images/s':>17}{'images/s/core':>15}"
           f"{'CPU ms/image':>14}"]
  for r in rows:
    rate = f"{r['images_per_s']:.1f} ({r['images_per_s_best']:.1f})"
    lines.append(f"{r['threads']:>7} {r['cores']:>5}  {_LABELS[r['stream']]:<26}{r['steps_per_s']:>9.2f}{rate:>17}"
                 f"{r['images_per_s_per_core']:>15.1f}{r['cpu_ms_per_image']:>14.0f}")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
