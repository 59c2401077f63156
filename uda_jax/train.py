"""Training and evaluation loops, top to bottom."""

import contextlib
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from PIL import Image

from uda_jax import checkpoint, evaluate, methods, optim, parallel, preemption, results, steps, visualize
from uda_jax import workdir as run_workdir
from uda_jax.data import labels, pipeline
from uda_jax.errors import RunStopped, UserError
from uda_jax.tools import init_from


def _class_set(config):
  """Checks the eval config; returns the class set's (names, palette)."""
  if config.eval.class_set not in labels.CLASS_SETS:
    raise UserError(f"eval.class_set {config.eval.class_set!r} is not known; choose one of "
                    f"{', '.join(labels.CLASS_SETS)}")
  names, palette = labels.CLASS_SETS[config.eval.class_set]
  if len(names) != config.model.num_classes:
    raise UserError(f"eval.class_set {config.eval.class_set!r} has {len(names)} classes but "
                    f"model.num_classes is {config.model.num_classes}")
  if not config.eval.scales or any(not 0 < s <= 4 for s in config.eval.scales):
    raise UserError(f"eval.scales={tuple(config.eval.scales)!r}: give one or more factors in (0, 4], e.g. "
                    "(1.0,) or (0.7, 1.0, 1.3)")
  upsample = config.eval.get("upsample", "bilinear")
  if upsample not in ("bilinear", "nearest"):
    raise UserError(f"eval.upsample={upsample!r}: choose 'bilinear' or 'nearest'")
  if upsample == "nearest" and (tuple(config.eval.scales) != (1.0,) or config.eval.flip):
    raise UserError("eval.upsample='nearest' (LSD-seg's protocol) is single-scale: set eval.scales=(1.0,) and "
                    "eval.flip=False, or eval.upsample='bilinear'")
  return names, palette


def run_eval(config, states, eval_step, mesh):
  """(summary, samples) of one pass over the eval split; samples feed `report`'s colourised predictions. The
  summary is the method's headline segmenter's (methods.segmenters); any other one's mIoU and extra means
  join it as extra columns named '<segmenter> <mean>'."""
  batches = pipeline.eval_iterator(config.data, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  cms, samples = evaluate.run(methods.segmenters(config, states), eval_step, batches, mesh, config.eval.num_images)
  names, _ = _class_set(config)
  summaries = [(name, evaluate.summarize(cm, names, tuple(config.eval.class_subset) or None,
                                         labels.EXTRA_MEANS.get(config.eval.class_set))) for name, cm in cms.items()]
  (_, summary), others = summaries[0], summaries[1:]
  for name, other in others:
    summary["extra"].update({f"{name} mIoU": other["mIoU"], **{f"{name} {k}": v for k, v in other["extra"].items()}})
  return summary, samples


def train_and_evaluate(config, workdir: str):
  """Trains config.method in workdir, resuming from its latest checkpoint; returns (states, final summary), or
  (states, None) when SIGTERM stopped the run (a checkpoint of the current step is saved)."""
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  _class_set(config)
  if config.train.nan_policy not in ("stop", "skip"):
    raise UserError(f"train.nan_policy={config.train.nan_policy!r}: choose 'stop' or 'skip'")
  if config.init_from_required and not config.init_from and not init_from.is_run(workdir):
    raise UserError(config.init_from_required)
  # Input first: a missing or unprepared dataset fails here, before anything is written to workdir.
  def local_batches(start):
    return pipeline.train_iterator(config.data, seed=config.seed, start_step=start,
                                   process_index=jax.process_index(), process_count=jax.process_count())

  it = local_batches(0)
  first = next(it)  # its shapes size the states; it is also step 0's batch of a fresh run
  pipeline.num_eval_examples(config.data)
  with run_workdir.Lock(workdir):
    return _train(config, workdir, method, mesh, local_batches, it, first)


def _train(config, workdir, method, mesh, local_batches, it, first):
  ckpt = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints)
  shapes = {k: v.shape for k, v in first.items()}
  states, start = _restore_or_init(config, workdir, method, mesh, shapes, ckpt)
  run_workdir.record_config(workdir, config, start)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if not start:
    writer.write_hparams({k: str(v) for k, v in _flatten(config.to_dict()).items()})
  logging.info("Parameters: %s", {k: sum(x.size for x in jax.tree.leaves(s.params)) for k, s in states.items()})

  train_step = steps.make_train_step(method, config, mesh)
  eval_step = steps.make_eval_step(config, mesh)
  num_steps = config.train.num_steps
  due = lambda done, every: done % every == 0 or done == num_steps
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=config.train.log_every)
  preempted = preemption.Preemption()
  guard = FiniteGuard(config.train.nan_policy, ckpt)
  summary = samples = None

  last = {}  # the latest host batch: generative schemes draw what they make of it at each evaluation

  def remember(batches):
    for batch in batches:
      last["batch"] = batch
      yield batch

  def evaluate_and_keep_best(done):
    nonlocal summary, samples
    summary, samples = run_eval(config, states, eval_step, mesh)
    ckpt.save_if_best(done, states, summary["mIoU"])
    _write_eval(config, workdir, writer, done, summary, samples, states, last.get("batch"))
    logging.info("step %d target mIoU %.2f", done, summary["mIoU"])

  # A run stopped between a checkpoint and its evaluation (SIGTERM, a kill) evaluates that step first.
  if start and due(start, config.train.eval_every) and start not in results.history_steps(workdir):
    evaluate_and_keep_best(start)
  # Batches are a function of (seed, step): a resumed run opens the stream at its step.
  local = local_batches(start) if start else itertools.chain([first], it)
  data = (parallel.global_batch(b, mesh) for b in remember(local))
  try:
    for step in range(start, num_steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        states, metrics = train_step(states, next(data), jnp.asarray(step, jnp.int32))
      done = step + 1
      guard.push(done, metrics)  # reads the previous step's checks: the device stays one step ahead
      progress(done)
      stop = preempted.reached(done)
      if due(done, config.train.log_every):
        ckpt.check(done)  # a failed asynchronous save (full disk) stops the run here, not at the next save
        guard.flush()
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if not k.startswith("finite/")}
        writer.write_scalars(done, {**scalars, **optim.learning_rates(config.optim, step),
                                    "train/skipped_steps": guard.skipped})
      if due(done, config.train.checkpoint_every) or stop:
        guard.flush()  # never save a step that was not checked
        ckpt.save(done, states)  # asynchronous: written while the next steps (or the evaluation) run
      if stop:
        ckpt.close()
        writer.close()
        print(f"stopped by SIGTERM at step {done}: checkpoint saved in {workdir}; run the same command again "
              "to resume", flush=True)
        return states, None
      if due(done, config.train.eval_every):
        guard.flush()
        evaluate_and_keep_best(done)
    guard.flush()
  except Exception as e:
    with contextlib.suppress(Exception):  # a writer failing too (a full disk) must not hide this error
      writer.flush()  # the steps' log lines (written on clu's thread) before the one error line main prints
    if isinstance(e, RunStopped):
      ckpt.close()  # the saves in flight hold checked states: let them finish
    raise
  finally:
    preempted.close()
  writer.flush()
  ckpt.close()

  if summary is None:  # resumed after the last step: evaluate the final state once more
    summary, samples = run_eval(config, states, eval_step, mesh)
  report(config, workdir, summary, samples, num_steps, "eval_final", states)
  writer.close()
  return states, summary


def _restore_or_init(config, workdir, method, mesh, shapes, ckpt):
  """(states, step) of the latest usable checkpoint in workdir, or fresh states (config.init_from) at 0.
  Resuming with a config that changes the states' structure is refused, naming what changed."""
  if ckpt.latest_step() is not None:
    states = steps.init_states(config, method, mesh, shapes, pretrained=False)
    differences = ckpt.metadata_differences(states)
    if differences:
      old = run_workdir.last_config(workdir)
      changed = run_workdir.changes(old, run_workdir.flat_config(config)) if old else {}
      raise UserError(f"cannot resume {workdir} (step {ckpt.latest_step()}): the checkpoint's states differ from "
                      f"this config's ({'; '.join(differences)}); config changes since the last start: "
                      f"{run_workdir.describe(changed) or 'none recorded'}. Undo them or give another --workdir")
    states, step = ckpt.restore(states)
    if step is not None:
      logging.info("Resumed from %s at step %d", workdir, step)
      ckpt.drop_best_after(step)
      return states, step
    logging.warning("no usable checkpoint in %s: starting from step 0", workdir)
  return steps.init_states(config, method, mesh, shapes, pretrained=True), 0


class FiniteGuard:
  """Reads the step's 'finite/*' checks (steps.guard_finite) one step late, so the host never waits for the
  device. A bad step was not applied; 'stop' raises RunStopped naming the terms, 'skip' counts it and goes on."""

  def __init__(self, policy: str, ckpt):
    self.policy, self.ckpt, self.skipped, self._pending = policy, ckpt, 0, None

  def push(self, step, metrics):
    self.flush()
    self._pending = (step, {k: v for k, v in metrics.items() if k.startswith("finite/")})

  def flush(self):
    if self._pending is None:
      return
    step, checks = self._pending
    self._pending = None
    bad = [k.removeprefix("finite/") for k, v in jax.device_get(checks).items() if not v > 0]
    if not bad:
      return
    if self.policy == "skip":
      self.skipped += 1
      logging.warning("step %d skipped: non-finite %s (%d skipped so far)", step, ", ".join(bad), self.skipped)
      return
    last = self.ckpt.latest_step()
    raise RunStopped(f"step {step} is non-finite in {', '.join(bad)}; its update was not applied and nothing "
                     f"after step {step - 1} was saved (latest checkpoint: "
                     f"{'none' if last is None else last}); --config.train.nan_policy=skip skips such steps")


def evaluate_checkpoint(config, workdir: str):
  """--mode=eval: evaluates the best (or latest) checkpoint in workdir, or the `init_from` weights."""
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  _class_set(config)
  n = pipeline.num_eval_examples(config.data)
  states, step = restore_for_inference(config, workdir, mesh, "evaluate")
  t0 = time.time()
  summary, samples = run_eval(config, states, steps.make_eval_step(config, mesh), mesh)
  logging.info("evaluated %d images in %.1f s", n, time.time() - t0)
  report(config, workdir, summary, samples, step, f"eval_{config.eval.checkpoint}_step{step}", states)
  return summary


def restore_for_inference(config, workdir: str, mesh, what: str):
  """(states, step) of eval.checkpoint (best | latest) in workdir, or the init_from weights (step 0)."""
  h, w = config.data.eval_size or (64, 64)
  shapes = {"source_image": (1, h, w, 3), "source_label": (1, h, w), "target_image": (1, h, w, 3)}
  has_checkpoint = init_from.is_run(workdir) or os.path.isdir(os.path.join(workdir, "best"))
  if not has_checkpoint and not config.init_from:
    raise UserError(f"nothing to {what}: {workdir} holds no checkpoint and config.init_from is empty")
  states = steps.init_states(config, methods.get(config.method), mesh, shapes, pretrained=not has_checkpoint)
  if not has_checkpoint:
    return states, 0
  ckpt = checkpoint.Checkpoints(workdir, read_only=True)  # the workdir may belong to a live training run
  states, step = ckpt.restore(states, config.eval.checkpoint)
  ckpt.close()
  if step is None:
    raise UserError(f"no {config.eval.checkpoint} checkpoint in {workdir} (--config.eval.checkpoint=best|latest)")
  return states, step


def _write_eval(config, workdir, writer, step, summary, samples, states, train_batch=None):
  """A periodic evaluation: scalars, prediction panels, the scheme's weight maps and reconstructions (of the
  latest training batch) to TensorBoard, a row of eval_history.csv."""
  writer.write_scalars(step, {"eval/mIoU": summary["mIoU"], "eval/pixel_acc": summary["pixel_acc"],
                              **{f"eval/{k}": v for k, v in summary["extra"].items()},
                              **{f"eval/iou_{k}": v for k, v in summary["per_class"].items()}})
  if jax.process_index() == 0:
    results.append_history(workdir, summary, step)
    panels, maps = _write_predictions(config, workdir, samples, f"step{step}", states)
    if len(panels):
      writer.write_images(step, {"eval/predictions": visualize.thumbnails(panels)})
    if len(maps):
      writer.write_images(step, {"eval/weight_maps": visualize.thumbnails(maps)})
    grid = methods.reconstructions(config, states, train_batch)
    if grid is not None:  # rows: source | G(F(source)), target | G(F(target))
      writer.write_images(step, {"train/reconstructions": grid[None] if grid.ndim == 3 else grid})
      visualize.save_png(Image.fromarray(np.concatenate(list(grid), axis=0)),
                         os.path.join(workdir, "predictions", f"step{step}", "reconstructions.png"))


def _write_predictions(config, workdir, samples, name, states):
  """Prediction panels, and heat maps of the scheme's weight maps (methods.visual_maps), of the samples."""
  _, palette = labels.CLASS_SETS[config.eval.class_set]
  directory = os.path.join(workdir, "predictions", name)
  panels = visualize.write_predictions(directory, samples, palette, config.data.normalization)
  images = [image for image, _, _ in samples or ()]
  maps = methods.visual_maps(config, states, images)
  return panels, (visualize.write_heatmaps(directory, images, maps, config.data.normalization) if maps else ())


def report(config, workdir, summary, samples, step, name, states):
  """Prints the per-class table; process 0 writes it as .md, .csv, .json, the colourised predictions and the
  scheme's weight maps."""
  table = results.markdown_table(summary, f"target {name} (step {step})")
  print(table, flush=True)
  if jax.process_index() == 0:
    paths = results.write_results(workdir, summary, step, name)
    if samples:
      _write_predictions(config, workdir, samples, name, states)
      paths.append(os.path.join(workdir, "predictions", name))
    logging.info("wrote %s", ", ".join(paths))


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
