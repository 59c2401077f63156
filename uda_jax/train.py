"""Training and evaluation loops, top to bottom."""

import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from uda_jax import checkpoint, evaluate, methods, optim, parallel, results, steps, visualize
from uda_jax.data import labels, pipeline
from uda_jax.errors import UserError
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
  return names, palette


def run_eval(config, seg_state, eval_step, mesh):
  """(summary, samples) of one pass over the eval split; samples feed `report`'s colourised predictions."""
  batches = pipeline.eval_iterator(config.data, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  cm, samples = evaluate.run(seg_state, eval_step, batches, mesh, config.eval.num_images)
  names, _ = _class_set(config)
  summary = evaluate.summarize(cm, names, tuple(config.eval.class_subset) or None,
                               labels.EXTRA_MEANS.get(config.eval.class_set))
  return summary, samples


def train_and_evaluate(config, workdir: str):
  method = methods.get(config.method)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  _class_set(config)

  if config.init_from_required and not config.init_from and not init_from.is_run(workdir):
    raise UserError(config.init_from_required)
  # Input first: a missing or unprepared dataset fails here, before anything is written to workdir.
  def local_batches(start):
    return pipeline.train_iterator(config.data, seed=config.seed, start_step=start,
                                   process_index=jax.process_index(), process_count=jax.process_count())

  it = local_batches(0)
  first = next(it)  # its shapes size the states; it is also step 0's batch of a fresh run
  pipeline.num_eval_examples(config.data)
  ckpt = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints)
  resuming = ckpt.latest_step() is not None
  states = steps.init_states(config, method, mesh, {k: v.shape for k, v in first.items()}, pretrained=not resuming)
  states, restored = ckpt.restore(states)
  start = restored or 0
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if restored:
    logging.info("Resumed from %s at step %d", workdir, start)
  else:
    writer.write_hparams({k: str(v) for k, v in _flatten(config.to_dict()).items()})
  logging.info("Parameters: %s", {k: sum(x.size for x in jax.tree.leaves(s.params)) for k, s in states.items()})

  train_step = steps.make_train_step(method, config, mesh)
  eval_step = steps.make_eval_step(config, mesh)
  num_steps = config.train.num_steps
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=config.train.log_every)
  summary = None
  # Batches are a function of (seed, step): a resumed run opens the stream at its step.
  local = local_batches(start) if start else itertools.chain([first], it)
  data = (parallel.global_batch(b, mesh) for b in local)
  for step in range(start, num_steps):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      states, metrics = train_step(states, next(data), jnp.asarray(step, jnp.int32))
    done = step + 1
    progress(done)
    if done % config.train.log_every == 0 or done == num_steps:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not all(np.isfinite(v) for v in scalars.values()):
        raise FloatingPointError(f"non-finite loss at step {done}: {scalars}")
      writer.write_scalars(done, {**scalars, **optim.learning_rates(config.optim, step)})
    if done % config.train.eval_every == 0 or done == num_steps:
      summary, samples = run_eval(config, states["seg"], eval_step, mesh)
      _write_eval(config, workdir, writer, done, summary, samples)
      logging.info("step %d target mIoU %.2f", done, summary["mIoU"])
      ckpt.save_if_best(done, states, summary["mIoU"])
    if done % config.train.checkpoint_every == 0 or done == num_steps:
      ckpt.save(done, states)
  writer.flush()
  ckpt.close()

  if summary is None:  # resumed after the last step: evaluate the final state once more
    summary, samples = run_eval(config, states["seg"], eval_step, mesh)
  report(config, workdir, summary, samples, num_steps, "eval_final")
  writer.close()
  return states, summary


def evaluate_checkpoint(config, workdir: str):
  """--mode=eval: evaluates the best (or latest) checkpoint in workdir, or the `init_from` weights."""
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  _class_set(config)
  n = pipeline.num_eval_examples(config.data)
  states, step = restore_for_inference(config, workdir, mesh, "evaluate")
  t0 = time.time()
  summary, samples = run_eval(config, states["seg"], steps.make_eval_step(config, mesh), mesh)
  logging.info("evaluated %d images in %.1f s", n, time.time() - t0)
  report(config, workdir, summary, samples, step, f"eval_{config.eval.checkpoint}_step{step}")
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
  ckpt = checkpoint.Checkpoints(workdir)
  states, step = ckpt.restore(states, config.eval.checkpoint)
  ckpt.close()
  if step is None:
    raise UserError(f"no {config.eval.checkpoint} checkpoint in {workdir} (--config.eval.checkpoint=best|latest)")
  return states, step


def _write_eval(config, workdir, writer, step, summary, samples):
  """A periodic evaluation: scalars and prediction panels to TensorBoard, a row of eval_history.csv."""
  writer.write_scalars(step, {"eval/mIoU": summary["mIoU"], "eval/pixel_acc": summary["pixel_acc"],
                              **{f"eval/{k}": v for k, v in summary["extra"].items()},
                              **{f"eval/iou_{k}": v for k, v in summary["per_class"].items()}})
  if jax.process_index() == 0:
    results.append_history(workdir, summary, step)
    panels = _write_predictions(config, workdir, samples, f"step{step}")
    if len(panels):
      writer.write_images(step, {"eval/predictions": visualize.thumbnails(panels)})


def _write_predictions(config, workdir, samples, name):
  _, palette = labels.CLASS_SETS[config.eval.class_set]
  return visualize.write_predictions(os.path.join(workdir, "predictions", name), samples, palette,
                                     config.data.normalization)


def report(config, workdir, summary, samples, step, name):
  """Prints the per-class table; process 0 writes it as .md, .csv, .json and the colourised predictions."""
  table = results.markdown_table(summary, f"target {name} (step {step})")
  print(table, flush=True)
  if jax.process_index() == 0:
    paths = results.write_results(workdir, summary, step, name)
    if samples:
      _write_predictions(config, workdir, samples, name)
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
