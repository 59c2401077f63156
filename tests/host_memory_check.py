"""Page faults of a repeated XLA:CPU execution with a large temporary buffer, with or without uda_jax.host_memory
(argv[1] = 'keep' | 'default' | 'late': set after a thread has allocated, so only reports whether they apply); a
subprocess, since malloc's settings are per process and must precede JAX. Imports what the trainer imports before it
sets them."""
import importlib
import resource
import sys
import threading

importlib.import_module("uda_jax.main")  # the trainer's imports, which must leave malloc with one arena
from uda_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

if sys.argv[1] == "late":  # a thread that allocates gets its own malloc arena
  worker = threading.Thread(target=lambda: [bytearray(4096) for _ in range(64)])
  worker.start()
  worker.join()
kept = host_memory.apply(sys.argv[1] != "default")
if sys.argv[1] == "late":
  print(f"kept {kept} faults -")
  sys.exit()
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position


@jax.jit
def f(x):  # 64 MB of temporaries, reduced to a scalar so the outputs stay small
  a = jnp.sin(x)[None] * jnp.arange(1.0, 4.0)[:, None, None]
  return (a @ jnp.cos(x)).sum() + jnp.exp(a).sum()


x = jnp.ones((2048, 2048))
for _ in range(10):  # the heap takes a few executions to settle (the next one may start before the last is freed)
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(f"kept {kept} faults {faults}")
