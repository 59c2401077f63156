"""`config.init_from`: start a segmenter from an imported checkpoint (`uda_jax.tools.import_torch`)."""

import json
import logging
import os
from typing import Any, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from uda_jax import checkpoint
from uda_jax.errors import UserError


def _flat(tree) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), keep_empty_nodes=False)


def is_run(directory: str) -> bool:
  """A workdir of a training run (it has checkpoints/) rather than a directory of imported weights."""
  return os.path.isdir(os.path.join(directory, "checkpoints"))


def _restore_run(directory: str) -> tuple[dict, int]:
  """The latest checkpoint of a run as a plain tree {state name: {params, batch_stats, ...}}, and its step."""
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(directory), "checkpoints"))
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise UserError(f"init_from {directory!r} is a run without a finished checkpoint; let that run save one "
                    "(train.checkpoint_every) or point init_from at another run")
  path = os.path.join(os.path.abspath(directory), "checkpoints", str(step), "default")
  return checkpoint.read_any_topology(path), step  # saved on any devices / processes


def _restore_imported(directory: str) -> dict:
  """The tree import_torch wrote, or a UserError saying what the directory is not and how to make one."""
  if not any(os.path.exists(os.path.join(directory, f)) for f in ("_CHECKPOINT_METADATA", "_METADATA")):
    raise UserError(f"init_from {directory!r} is neither a training run's workdir (no checkpoints/) nor imported "
                    "weights (no Orbax checkpoint files); write weights with `python -m uda_jax.tools.import_torch "
                    "--arch ARCH --input FILE --output DIR`, or give the workdir of an earlier run")
  try:
    return checkpoint.read_any_topology(os.path.abspath(directory))
  except Exception as e:  # pylint: disable=broad-except
    cause = (str(e).strip().splitlines() or [""])[-1]
    raise UserError(f"init_from {directory!r}: cannot read its checkpoint ({type(e).__name__}: {cause}); "
                    "import the weights again") from None


def load_states(directory: str, states: Mapping[str, Any]) -> dict[str, Any]:
  """`states` with the segmenter's variables from `directory`, and any other state's parameters (e.g. the
  discriminator) where the directory has one of the same name and shapes (FADA's adversarial stage continues
  from its source-only run; an imported FADA checkpoint may carry model_D). Optimizer states and step counters
  stay fresh: the next stage restarts its schedule at 0.

  `directory` is a run's workdir (its latest checkpoint) or a directory written by import_torch.
  """
  if not os.path.isdir(directory):
    raise UserError(f"init_from {directory!r} is not a directory; give a run's workdir or write one with "
                    "`python -m uda_jax.tools.import_torch --arch ARCH --input FILE --output DIR`")
  if is_run(directory):
    tree, step = _restore_run(directory)
    seg, others = tree["seg"], {k: v["params"] for k, v in tree.items() if k != "seg" and "params" in v}
    source = {"params": seg["params"], "batch_stats": seg.get("batch_stats") or {}}
    logging.info("init_from run %s at step %d", directory, step)
  else:
    source = _restore_imported(directory)
    others = source.pop("discriminators", None) or {}
  out = dict(states)
  seg_state = states["seg"]
  v = merge(directory, source, {"params": seg_state.params, "batch_stats": seg_state.batch_stats})
  out["seg"] = seg_state.replace(params=v["params"], batch_stats=v["batch_stats"])
  for name, params in others.items():
    if name in states and _same_shapes(params, states[name].params):
      out[name] = states[name].replace(params=merge(directory, params, states[name].params))
      logging.info("init_from %s: %s restored", directory, name)
    else:
      logging.info("init_from %s: %s not restored (no such state here, or another architecture)", directory, name)
  return out


def _imported_arch(directory: str) -> str:
  """' (imported as ARCH)' from import_torch's report in `directory`, or ''."""
  try:
    with open(os.path.join(directory, "import_report.json")) as f:
      return f" (imported as --arch {json.load(f)['arch']})"
  except (OSError, ValueError, KeyError):
    return ""


def _same_shapes(a, b) -> bool:
  fa, fb = _flat(a), _flat(b)
  return fa.keys() == fb.keys() and all(tuple(np.shape(fa[k])) == tuple(fb[k].shape) for k in fa)


def load_init(directory: str, target_variables: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
  """Restores the imported-weights `directory` and merges it into `target_variables` (see `merge`)."""
  if not os.path.isdir(directory):
    raise UserError(f"init_from {directory!r} is not a directory; write one with "
                    "`python -m uda_jax.tools.import_torch --arch ARCH --input FILE --output DIR`")
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(directory))
  restored.pop("discriminators", None)  # an imported FADA checkpoint's model_D: load_states places it
  return merge(directory, restored, target_variables, strict=strict)


def merge(directory: str, restored, target_variables: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
  """Merges the `restored` tree (read from `directory`), by path, into freshly initialised `target_variables`.

  Variables absent from the checkpoint (e.g. heads the file did not have) keep their fresh init. A shape
  mismatch raises ValueError naming every offending path; so do checkpoint entries the model has no
  place for unless strict=False (then they are logged and dropped). Restored leaves take the target
  leaf's dtype and, for jax.Arrays, its sharding.
  """
  src, dst = _flat(restored), _flat(target_variables)
  params_of = lambda flat: sorted("/".join(p) for p in flat if p[0] == "params")
  if params_of(src) and not set(p for p in src if p[0] == "params") & set(dst):
    raise UserError(f"init_from {directory!r} holds weights of another architecture{_imported_arch(directory)}: "
                    f"none of its {len(params_of(src))} parameters exists in this model (its first is "
                    f"{params_of(src)[0]!r}, this model's {params_of(dst)[0]!r}); check model.arch or give "
                    "weights imported for it")
  mismatched = [f"  {'/'.join(p)}: checkpoint {tuple(np.shape(a))}, model {tuple(dst[p].shape)}"
                for p, a in src.items() if p in dst and tuple(np.shape(a)) != tuple(dst[p].shape)]
  if mismatched:
    raise UserError(f"{directory}: shape mismatch with the model (check model settings, e.g. "
                    "num_classes):\n" + "\n".join(mismatched))
  extra = sorted("/".join(p) for p in src if p not in dst)
  if extra:
    msg = f"{directory}: {len(extra)} entries have no place in the model:\n  " + "\n  ".join(extra)
    if strict:
      raise UserError(msg + "\n(check multi_level / aspp_branches, or pass strict=False to drop them)")
    logging.warning(msg)

  def put(path, fresh):
    if path not in src:
      return fresh
    a = np.asarray(src[path], dtype=fresh.dtype)
    return jax.device_put(a, fresh.sharding) if isinstance(fresh, jax.Array) else a

  merged = {p: put(p, v) for p, v in dst.items()}
  fresh = sorted("/".join(p) for p in dst if p not in src)
  logging.info("init_from %s: restored %d variables, %d keep their fresh init: %s", directory,
               len(dst) - len(fresh), len(fresh), fresh)
  return flax.traverse_util.unflatten_dict(merged)
