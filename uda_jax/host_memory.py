"""On CPU, keep freed host memory in the process, so that each step's buffers need no fresh pages (issue 13).

XLA:CPU allocates every execution's temporary buffer (2.2 GB for the 256x512 FADA step) with malloc on one of its
worker threads. glibc serves a block that large with a fresh mmap from a thread arena and unmaps it when it is
freed, so every step touched ~540,000 new pages: about 1.0 s of kernel time (page faults and zeroing) per step,
7-8% of the 2-core step's wall time. With one malloc arena, no mmap for large blocks and no trimming of the heap's
top, the block is carved from the main heap and reused: no page faults once the heap has settled, after the
first few steps (docs/performance.md, session 18).

The cost: the process keeps at least its peak host memory until it exits (the next step needs it again anyway), and one
arena serialises malloc between threads. Set by mallopt(3) before JAX starts its threads, only on a CPU backend
and only under glibc (elsewhere nothing changes); `--nocpu_keep_host_memory` leaves malloc alone.
"""

import ctypes
import sys

from absl import flags

from uda_jax import xla_flags

ENABLED = flags.DEFINE_bool("cpu_keep_host_memory", True, "On CPU under glibc, malloc keeps freed memory for reuse "
                            "(one arena, no mmap, no trim): no page faults per step; --nocpu_keep_host_memory "
                            "leaves malloc alone.")
# mallopt(3) parameters (malloc.h); a trim threshold of -1 disables trimming.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def _glibc():
  """The C library if it is glibc (it has mallopt and these parameters), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (not musl)
    return None
  libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return libc


def apply(enabled: bool = True) -> bool:
  """Sets SETTINGS where they apply (call before JAX starts); returns whether malloc now keeps freed memory."""
  if not enabled or not xla_flags.cpu_backend_expected() or xla_flags.backend_started():
    return False
  libc = _glibc()
  if libc is None:
    return False
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
