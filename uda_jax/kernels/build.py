"""Compiles a kernel source next to this file into a shared library, once per source, jaxlib and CPU.

The library goes to $UDA_JAX_KERNEL_CACHE (default $XDG_CACHE_HOME/uda_jax/kernels or ~/.cache/uda_jax/kernels),
named by a hash of what it depends on, and is written to a temporary name first so that concurrent processes (the
hosts of a pod sharing a home directory, pytest workers) never load a half-written file. `-march=native` code is
only valid on a CPU like the one that built it, so the CPU's feature flags are part of the hash.
"""

import ctypes
import functools
import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile

from absl import logging
import jax

from uda_jax import switches
from uda_jax.errors import UserError

_HERE = os.path.dirname(os.path.abspath(__file__))
# Tried in order: native code first, portable code where the compiler rejects -march=native (some clang / ARM).
FLAG_SETS = (("-O3", "-march=native"), ("-O3",))
COMMON_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-w")


class BuildError(UserError):
  """No usable C++ compiler, or the kernel did not compile; the message says which and how."""


def cache_dir() -> str:
  explicit = os.environ.get("UDA_JAX_KERNEL_CACHE")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "uda_jax", "kernels")


def compiler() -> str | None:
  cxx = os.environ.get("CXX")
  return shutil.which(cxx) if cxx else (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++"))


def _cpu_signature() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
  except OSError:
    return platform.processor() or platform.machine()


def build(source: str) -> str:
  """Path of the shared library built from `source` (a file name in this directory); raises BuildError."""
  cxx = compiler()
  if cxx is None:
    raise BuildError(f"no C++ compiler found (set CXX, or install g++ / clang++) to build uda_jax/kernels/{source}")
  text = b""
  for path in [os.path.join(_HERE, source), *sorted(glob.glob(os.path.join(_HERE, "*.h")))]:  # and its headers
    with open(path, "rb") as f:
      text += f.read()
  key = hashlib.sha256(b"\0".join([
      text, importlib.metadata.version("jaxlib").encode(), cxx.encode(), _cpu_signature().encode(),
      repr((FLAG_SETS, COMMON_FLAGS)).encode()])).hexdigest()[:16]
  out_dir = cache_dir()
  target = os.path.join(out_dir, f"{os.path.splitext(source)[0]}-{key}.so")
  if os.path.exists(target):
    return target
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise BuildError(f"cannot create the kernel cache {out_dir} ({e}); set UDA_JAX_KERNEL_CACHE") from e
  errors = []
  for flags in FLAG_SETS:
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    cmd = [cxx, *flags, *COMMON_FLAGS, f"-I{jax.ffi.include_dir()}", os.path.join(_HERE, source), "-o", tmp]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if proc.returncode == 0:
        os.replace(tmp, target)
        return target
      errors.append(f"{' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  raise BuildError(f"uda_jax/kernels/{source} did not compile:\n" + "\n".join(errors))


def register(source: str, targets: dict[str, str]) -> str | None:
  """Builds `source` and registers its FFI handlers ({target name: symbol}) for the CPU: None, or why not."""
  try:
    lib = ctypes.cdll.LoadLibrary(build(source))
  except (BuildError, OSError) as e:
    return str(e)
  for name, symbol in targets.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return None


@functools.cache
def warn_fallback(env: str, what: str, instead: str, why: str):
  """Once per process and kernel: why the kernel is unavailable and what runs instead."""
  logging.warning("%s could not be built or loaded, so training uses %s (docs/performance.md); %s=0 silences "
                  "this. %s", what[0].upper() + what[1:], instead, env, why)


def use_kernel(env: str, what: str, instead: str, load) -> bool:
  """Whether to use a CPU kernel (`what`): on a CPU backend when `load()` (None or why not) succeeds, unless the
  switch `env` is 0; when it fails, warn and fall back to `instead`, or raise if `env` is 1."""
  forced = switches.forced(env)
  if forced is False or jax.default_backend() != "cpu":
    return False
  why_not = load()
  if why_not is None:
    return True
  if forced:
    raise BuildError(f"{env}=1 but {what} could not be built or loaded: {why_not}")
  warn_fallback(env, what, instead, why_not)
  return False
