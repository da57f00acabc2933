"""How Flamingo's layer stack splits into repeating units, which of them `config.model.scan_layers`
scans, and the conversion of parameters between the unscanned and the scanned layout.

Gated block k sits before LM block `start + k * every`; with the LM blocks up to the next gated
block it forms unit k. LM blocks before `start` belong to no unit. With `scan_layers`, the whole
units (one gated block, `every` LM blocks) run as one `nn.scan`, so the compiler sees one unit
instead of all of them; the LM blocks before `start` and a shorter last unit run one by one.
Flamingo-80B (80 LM blocks, every 7, start 0): 11 scanned units over LM blocks 0-76, then gated
block 11 and LM blocks 77-79.

Parameter layouts (what `Flamingo(model_config).init` gives):
  unscanned: `gated_xattn_{k}/...`, `lm/layers_{i}/...` (what checkpoint importers write).
  scanned: `scanned/gated_xattn/...` and `scanned/layers_{j}/...` (the j-th LM block of a unit)
    with a leading axis [U] over the U scanned units, logical axis name "layers"; the unscanned
    blocks keep their names (`gated_xattn_{k}` for k >= U, `lm/layers_{i}`).
"""

import dataclasses

from flax import traverse_util
import jax
import jax.numpy as jnp

SCANNED = "scanned"  # The scanned units' module (and parameter subtree).


@dataclasses.dataclass(frozen=True)
class Layout:
  """Placement of the gated blocks and LM blocks of a model config."""
  num_layers: int
  start: int
  every: int
  scan: bool

  @classmethod
  def of(cls, model_config) -> "Layout":
    x = model_config.xattn
    return cls(model_config.lm.num_layers, x.start, x.every, model_config.scan_layers)

  @property
  def gated(self) -> range:
    """The LM blocks preceded by a gated block."""
    return range(self.start, self.num_layers, self.every)

  @property
  def prefix(self) -> range:
    """The LM blocks before the first gated block."""
    return range(min(self.start, self.num_layers))

  @property
  def num_scanned(self) -> int:
    """U: the number of units that run in the scan (0 without `scan`)."""
    return max(self.num_layers - self.start, 0) // self.every if self.scan else 0

  def unit(self, k: int) -> range:
    """The LM blocks of unit k: after gated block k, before the next one."""
    first = self.gated[k]
    return range(first, min(first + self.every, self.num_layers))

  @property
  def unscanned(self) -> list[int]:
    """The LM blocks that run one by one."""
    return [*self.prefix, *(i for k in range(self.num_scanned, len(self.gated))
                            for i in self.unit(k))]


def unit_paths(layout: Layout) -> dict[tuple[int, str], tuple[str, ...]]:
  """{(unit k, block name in the unit): the block's path in the unscanned layout}."""
  paths = {}
  for k in range(layout.num_scanned):
    paths[k, "gated_xattn"] = (f"gated_xattn_{k}",)
    paths.update({(k, f"layers_{j}"): ("lm", f"layers_{i}") for j, i in enumerate(layout.unit(k))})
  return paths


def stack_layers(params, model_config):
  """Unscanned parameters -> the layout `Flamingo(model_config)` expects: the scanned units'
  blocks stacked on a new leading axis. Unchanged when `model_config.scan_layers` is off.

  Any part of the parameter tree converts (the trainable part, the frozen part, gradients): each
  block moves if it is there.
  """
  layout = Layout.of(model_config)
  if not layout.num_scanned:
    return params
  if SCANNED in params:
    raise ValueError(f"The parameters already have the scanned layout ({SCANNED!r}).")
  paths = unit_paths(layout)
  owner = {path: unit for unit, path in paths.items()}
  rest, units = {}, [{} for _ in range(layout.num_scanned)]
  for key, value in traverse_util.flatten_dict(params).items():
    unit = owner.get(key[:1]) or owner.get(key[:2])
    if unit is None:
      rest[key] = value
    else:
      k, name = unit
      units[k][(name, *key[len(paths[unit]):])] = value
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *units)
  rest.update({(SCANNED, *key): value for key, value in stacked.items()})
  return traverse_util.unflatten_dict(rest)


def unstack_layers(params, model_config):
  """Inverse of `stack_layers`: the scanned layout of `model_config` -> unscanned parameters."""
  layout = Layout.of(model_config)
  if not layout.num_scanned:
    return params
  paths = unit_paths(layout)
  rest = {}
  for key, value in traverse_util.flatten_dict(params).items():
    if key[0] != SCANNED:
      rest[key] = value
      continue
    for k in range(layout.num_scanned):
      rest[(*paths[k, key[1]], *key[2:])] = value[k]
  return traverse_util.unflatten_dict(rest)
