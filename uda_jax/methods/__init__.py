"""Schemes by name. Each module provides create_states(config, rng, shapes) and
losses(params, states, batch, rng, config, axis_name) -> ({state name: loss}, {'batch_stats', 'metrics'})."""

import importlib

METHODS = ("source_only", "adaptsegnet", "fada")


def get(name: str):
  if name not in METHODS:
    raise ValueError(f"config.method {name!r} is not known; choose one of {', '.join(METHODS)}")
  return importlib.import_module(f"uda_jax.methods.{name}")
