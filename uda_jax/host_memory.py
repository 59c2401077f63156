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

A thread that allocated before the call has its own arena already, which later threads may share and which serves
blocks over 64 MB by mmap whatever the settings; apply() then warns and returns False. The trainer calls it after
its imports with one arena (tensorflow's and orbax's imports start no allocating thread); a program that embeds
uda_jax should call `uda_jax.cli.prepare_cpu()` before it starts threads, or run with MALLOC_ARENA_MAX=1.
"""

import ctypes
import sys

from absl import flags, logging

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
  libc.malloc_info.argtypes, libc.malloc_info.restype = (ctypes.c_int, ctypes.c_void_p), ctypes.c_int
  libc.open_memstream.argtypes = (ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t))
  libc.open_memstream.restype = ctypes.c_void_p
  libc.fclose.argtypes, libc.free.argtypes = (ctypes.c_void_p,), (ctypes.c_void_p,)
  return libc


def arenas(libc) -> int:
  """How many malloc arenas the process has (malloc_info(3) reports one <heap> each); 0 if it cannot tell."""
  text, size = ctypes.c_char_p(), ctypes.c_size_t()
  stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
  if not stream:
    return 0
  ok = libc.malloc_info(0, stream) == 0
  libc.fclose(stream)
  report = ctypes.string_at(text, size.value) if text.value is not None else b""
  libc.free(text)
  return report.count(b"<heap nr=") if ok else 0


def apply(enabled: bool = True) -> bool:
  """Sets SETTINGS where they apply (call before JAX starts); returns whether malloc now keeps freed memory."""
  if not enabled or not xla_flags.cpu_backend_expected() or xla_flags.backend_started():
    return False
  libc = _glibc()
  if libc is None:
    return False
  if not all(libc.mallopt(param, value) == 1 for param, value in SETTINGS):
    return False
  count = arenas(libc)
  if count > 1:
    logging.warning("--cpu_keep_host_memory applies only in part: %d malloc arenas exist already (threads allocated "
                    "before it was set), and they still map large blocks afresh; call uda_jax.cli.prepare_cpu() "
                    "before starting threads, or run with MALLOC_ARENA_MAX=1", count)
    return False
  return True
