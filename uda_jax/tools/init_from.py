"""`config.init_from`: start a segmenter from an imported checkpoint (`uda_jax.tools.import_torch`)."""

import logging
import os
from typing import Any, Mapping

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from uda_jax.errors import UserError


def _flat(tree) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), keep_empty_nodes=False)


def load_init(directory: str, target_variables: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
  """Restores `directory` and merges it, by path, into freshly initialised `target_variables`.

  Variables absent from the checkpoint (e.g. heads the file did not have) keep their fresh init. A shape
  mismatch raises ValueError naming every offending path; so do checkpoint entries the model has no
  place for unless strict=False (then they are logged and dropped). Restored leaves take the target
  leaf's dtype and, for jax.Arrays, its sharding.
  """
  if not os.path.isdir(directory):
    raise UserError(f"init_from {directory!r} is not a directory; write one with "
                    "`python -m uda_jax.tools.import_torch --arch ARCH --input FILE --output DIR`")
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(directory))
  src, dst = _flat(restored), _flat(target_variables)
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
