"""Run in a subprocess: one toy AdaptSegNet step; prints the loss and the gradient-moved parameters' checksum,
so a test can compare runs with and without uda_jax.xla_flags (argv[1] = 'flags' | 'noflags')."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from uda_jax import xla_flags  # pylint: disable=g-import-not-at-top

added = xla_flags.apply(sys.argv[1] == "flags")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

import adaptsegnet
from step_utils import init, random_batch
from uda_jax import parallel, steps

c = adaptsegnet.get_config("toy")
c.model.width, c.disc.channels = 8, (8, 8, 8, 8)
batch = random_batch()
method, mesh, states = init(c, batch)
before = jax.device_get(states)
new, metrics = steps.make_train_step(method, c, mesh)(states, parallel.global_batch(batch, mesh), jnp.int32(0))
new = jax.device_get(new)
for k in sorted(new):
  delta = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
           for a, b in zip(jax.tree.leaves(new[k].params), jax.tree.leaves(before[k].params))]
  print(f"state {k} {np.sqrt(sum(np.sum(d * d) for d in delta)):.10e}")
print(f"loss {float(metrics['loss_seg']):.10e}")
print(f"xla_flags {' '.join(added) or '-'}")
