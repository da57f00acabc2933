"""An evaluation's batches on the parameters' mesh, one host or many.

Every host walks the same queries in the same batches (the support selection is seeded, the
prompts are text: each host builds them all, so all agree on the batch's padded length) but
loads, encodes and holds only its own rows of each batch (`sharding.host_rows`), which
`put` joins into global arrays split along the mesh's batch axes. A computation on the mesh is
collective: every host calls it the same number of times, with the same shapes, which `rounds`
agrees on where hosts have different amounts of work.
"""

from typing import Callable, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from flamingo_jax import sharding


class Placement:
  """Batches of `size` rows (the requested size rounded up to a multiple of the ways the mesh
  splits a batch) on `mesh` under `axis_rules`; this host holds `rows` of each."""

  def __init__(self, mesh: Mesh, axis_rules, batch_size: int):
    self.mesh, self.axis_rules = mesh, axis_rules
    shards = sharding.batch_shards(mesh, axis_rules)
    self.size = -(-batch_size // shards) * shards
    self.rows = sharding.host_rows(mesh, axis_rules, self.size)

  def put(self, local: np.ndarray) -> jax.Array:
    """This host's rows [len(rows), ...] -> the global array [size, ...], split by batch."""
    return jax.make_array_from_process_local_data(
        sharding.batch_sharding(self.mesh, self.axis_rules, local.ndim), local,
        (self.size,) + local.shape[1:])

  def replicate(self, value: np.ndarray) -> jax.Array:
    """The same array on every host -> a global array, whole on every device."""
    return jax.make_array_from_process_local_data(sharding.replicated(self.mesh), value)

  def rounds(self, count: int) -> int:
    """Batches needed for `count` items of this host's own, `len(rows)` a batch, on the host
    that needs the most: how many times every host calls a collective computation."""
    needed = np.int32(-(-count // len(self.rows)))
    return int(np.max(multihost_utils.process_allgather(needed)))

  def map_local(self, compute: Callable[[jax.Array], jax.Array], items: Sequence,
                load: Callable[[object], np.ndarray], blank: np.ndarray) -> list[np.ndarray]:
    """compute(global batch) -> global output, over `items` of this host's own, `len(rows)` a
    batch (`load` makes an item's input; a short batch is filled with `blank`); returns each
    item's output row, this host's alone (nothing moves between hosts)."""
    per_batch, outputs = len(self.rows), []
    for start in range(0, self.rounds(len(items)) * per_batch, per_batch):
      part = [load(item) for item in items[start:start + per_batch]]
      inputs = np.stack(part + [blank] * (per_batch - len(part)))
      outputs += list(sharding.local_rows(compute(self.put(inputs)))[:len(part)])
    return outputs

  def map_all(self, compute: Callable[[jax.Array], jax.Array], items: Sequence,
              load: Callable[[object], np.ndarray]) -> np.ndarray:
    """compute(global batch) -> global output over every item, each host loading its rows of
    each batch of `size`; returns the outputs of all the items, whole, on every host."""
    outputs = []
    for start in range(0, len(items), self.size):
      part = items[start:start + self.size]
      part = part + [part[-1]] * (self.size - len(part))
      inputs = np.stack([load(part[row]) for row in self.rows])
      outputs.append(sharding.gather(compute(self.put(inputs))))
    return np.concatenate(outputs)[:len(items)]
