"""Each image encoded once a run: visual tokens (after the resampler) kept by the medium's key.

Few-shot prompts repeat the support images across queries (at 32 shots, 32 of a prompt's 33
media; at every number of shots, the same queries again), and the frozen tower plus the
resampler is most of a prompt's compute. A medium's visual tokens depend on that medium alone
(`decode.encode` encodes each on its own), so tokens kept from an earlier batch are exactly what
encoding it again would give. The cache is bounded: past `max_bytes` the least recently used
are dropped (a COCO-sized support pool at the paper's D = 1536 is tens of GB).
"""

import collections
from typing import Callable, Hashable, Sequence

import numpy as np

# keys -> their visual tokens, [R, D] each, in order.
Encoder = Callable[[Sequence[Hashable]], list[np.ndarray]]


class VisualTokenCache:
  """Visual tokens [R, D] by medium key, at most `max_bytes` of them (0: none kept between
  calls of `tokens`)."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self.entries: collections.OrderedDict = collections.OrderedDict()
    self.bytes = 0
    self.encoded = 0  # Media encoded so far: the cache's misses.

  def tokens(self, keys: Sequence[Sequence[Hashable]], encode: Encoder) -> np.ndarray:
    """keys [B][M] -> visual tokens [B, M, R, D]: kept ones as they are, the others (each
    distinct key once) through `encode`, then kept."""
    wanted = list(dict.fromkeys(k for row in keys for k in row))
    found = {k: self.entries[k] for k in wanted if k in self.entries}
    for key in found:
      self.entries.move_to_end(key)
    missing = [k for k in wanted if k not in found]
    found.update(zip(missing, encode(missing)))
    self.encoded += len(missing)
    for key in missing:
      self.keep(key, found[key])
    return np.stack([np.stack([found[k] for k in row]) for row in keys])

  def keep(self, key: Hashable, value: np.ndarray) -> None:
    self.entries[key] = value
    self.bytes += value.nbytes
    while self.bytes > self.max_bytes and self.entries:
      self.bytes -= self.entries.popitem(last=False)[1].nbytes
