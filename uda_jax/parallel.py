"""Device mesh over a 'data' axis, global arrays from per-process batches, replicated placement."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from uda_jax.errors import UserError

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  # An Auto-typed mesh (not jax.make_mesh's Explicit default) so shard_map takes plain in_specs.
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def vary_like(x, *arrays):
  """Inside shard_map, give `arrays` x's varying axes (outside it, returns them as they are). Custom calls and
  custom_vjp rules need it: a custom-call result carries no varying axes though its values are per device, and
  an unmapped parameter must vary before it meets per-device data in a custom_vjp, so that JAX sums its gradient
  over devices (the transpose of that cast), as it does inside its own ops."""
  axes = tuple(sorted(jax.typeof(x).manual_axis_type.varying))
  missing = lambda a: tuple(n for n in axes if n not in jax.typeof(a).manual_axis_type.varying)
  return tuple(jax.lax.pcast(a, missing(a), to="varying") if missing(a) else a for a in arrays)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global jax.Arrays sharded along 'data' (leading axis)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str):
  """A global batch every process and device gets an equal share of; else a UserError naming the value."""
  if batch_size <= 0:
    raise UserError(f"{what}={batch_size}: give a positive number of images per step")
  p, n = jax.process_count(), mesh.devices.size
  if batch_size % p:
    raise UserError(f"{what}={batch_size} is not a multiple of the number of processes ({p}): every host reads "
                    "an equal share of the global batch")
  if batch_size % n:
    raise UserError(f"{what}={batch_size} must be a multiple of the number of devices ({n})")
