"""Endless streams of example indices with random access: position p of a stream reads chunk p // size.

Each chunk is a pure function of (seed, stream, chunk index), so the index at any position can be computed
without replaying earlier ones: a resumed run and every process agree on every batch.
"""

import zlib

import numpy as np

from uda_jax.errors import UserError


class ChunkedSampler:
  """positions -> example indices; subclasses define `size` and `chunk(k)` (int64 [size])."""

  size: int

  def __init__(self):
    self._cache: dict[int, np.ndarray] = {}

  def chunk(self, k: int) -> np.ndarray:
    raise NotImplementedError

  def _chunk(self, k: int) -> np.ndarray:
    if k not in self._cache:
      if len(self._cache) >= 2:  # Positions only move forward: keep the current and the next chunk.
        self._cache.pop(min(self._cache))
      self._cache[k] = self.chunk(k)
    return self._cache[k]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    chunks, offsets = np.divmod(np.asarray(positions, np.int64), self.size)
    out = np.empty_like(offsets)
    for k in np.unique(chunks):
      where = chunks == k
      out[where] = self._chunk(int(k))[offsets[where]]
    return out


class EpochSampler(ChunkedSampler):
  """Epochs over a split of n examples: position p reads permutation(seed, epoch p // n, stream)[p % n]; a
  batch may straddle two epochs. `stream` ('source', 'target') keeps the orders of two roles independent even
  on one dataset."""

  def __init__(self, n: int, seed: int, stream: str):
    super().__init__()
    if n <= 0:
      raise UserError(f"Cannot sample from an empty split (stream {stream!r}).")
    self.n = self.size = n
    self._key = (int(seed) % 2**63, zlib.crc32(stream.encode()))

  def chunk(self, k: int) -> np.ndarray:
    return np.random.default_rng([*self._key, k]).permutation(self.n)

  permutation = chunk
