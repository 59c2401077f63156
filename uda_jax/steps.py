"""Jitted, data-parallel step functions. The per-device bodies are module-level so tests can call them."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from uda_jax import evaluate, models
from uda_jax import parallel
from uda_jax.errors import UserError
from uda_jax.methods import pixel_weights
from uda_jax.tools import init_from
from uda_jax.parallel import AXIS


def init_states(config, method, mesh, batch_shapes, pretrained: bool = True):
  """All train states of `method`, initialised from (seed) and replicated over the mesh, then, if `pretrained`,
  loaded from config.init_from (skip that when a checkpoint of the run itself will be restored)."""
  pixel_weights.check(config)
  shapes = {k: (1, *v[1:]) for k, v in batch_shapes.items()}
  shapes["axis_name"] = parallel.AXIS
  rng = jax.random.key(config.seed)
  init = jax.jit(lambda: method.create_states(config, rng, shapes), out_shardings=parallel.replicated(mesh))
  states = init()
  if not pretrained:
    return states
  if config.init_from:  # pretrained weights or an earlier stage's run, loaded outside jit, placed like the fresh
    states = init_from.load_states(config.init_from, states)
  elif config.init_from_required:
    raise UserError(config.init_from_required)
  return states


def train_step(states, batch, step, *, method, config, axis_name=AXIS):
  """One step of `method`: every state gets the gradient of its own loss, averaged over devices."""
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), step), jax.lax.axis_index(axis_name))
  # Per-device gradients of per-device losses, then averaged: marking the replicated params device-varying
  # stops shard_map's autodiff from already summing their gradients over the axis.
  params = jax.lax.pcast({k: s.params for k, s in states.items()}, axis_name, to="varying")

  def total(p):
    per_state, aux = method.losses(p, states, batch, rng, config, axis_name)
    return sum(per_state.values()), (per_state, aux)

  grads, (per_state, aux) = jax.grad(total, has_aux=True)(params)
  grads = jax.lax.pmean(grads, axis_name)
  new = {k: s.apply_gradients(grads=grads[k]) for k, s in states.items()}
  new["seg"] = new["seg"].replace(batch_stats=aux["batch_stats"])
  metrics = jax.lax.pmean({**{f"loss_{k}": v for k, v in per_state.items()}, **aux["metrics"]}, axis_name)
  return guard_finite(states, new, metrics, axis_name)


def guard_finite(old, new, metrics, axis_name=AXIS):
  """A step whose losses, updated params or BatchNorm statistics hold NaN / Inf is not applied: the states stay
  as they were, so nothing non-finite is ever saved. metrics gain 'finite/<term>' (1.0 or 0.0) per loss and per
  state's params and statistics, for the loop to name the culprits (train.nan_policy). One reduction over the
  states: negligible next to the step."""
  all_finite = lambda tree: jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [True]))
  checks = {f"finite/{k}": jnp.isfinite(v) for k, v in metrics.items()}
  for k, s in new.items():
    checks[f"finite/{k}.params"] = all_finite(s.params)
    checks[f"finite/{k}.batch_stats"] = all_finite(s.batch_stats)
  checks = {k: jax.lax.pmin(v.astype(jnp.float32), axis_name) for k, v in checks.items()}  # any device bad
  ok = jnp.all(jnp.stack(list(checks.values())) > 0)
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return kept, {**metrics, **checks}


def eval_step(seg_state, batch, *, num_classes, scales=(1.0,), flip=False, aux_weight=0.0, upsample="bilinear",
              axis_name=AXIS):
  """Prediction at label resolution (uint8 train ids, sharded like the batch) and the confusion matrix of one
  padded batch, summed over devices."""
  variables = {"params": seg_state.params, "batch_stats": seg_state.batch_stats}
  forward = lambda x: models.prediction_logits(seg_state.apply_fn(variables, x, train=False), aux_weight)
  pred = evaluate.predict(forward, batch["image"], batch["label"].shape[1:3], scales, flip, upsample=upsample)
  cm = evaluate.confusion_matrix(pred, batch["label"], batch["mask"], num_classes)
  return {"cm": jax.lax.psum(cm, axis_name), "pred": pred.astype("uint8")}


def make_train_step(method, config, mesh):
  body = functools.partial(train_step, method=method, config=config)
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P())),
                 donate_argnums=0)


def make_eval_step(config, mesh):
  body = functools.partial(eval_step, num_classes=config.model.num_classes, scales=tuple(config.eval.scales),
                           flip=bool(config.eval.flip), aux_weight=float(config.eval.aux_weight),
                           upsample=config.eval.get("upsample", "bilinear"))
  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs={"cm": P(), "pred": P(AXIS)}))
