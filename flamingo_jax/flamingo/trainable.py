"""The one rule that separates trainable from frozen parameters, by path.

Paths are '/'-joined keys of the parameter tree, e.g. 'gated_xattn_3/attention/query/kernel', or
'scanned/gated_xattn/attention/query/kernel' for the gated blocks of scanned layers
(flamingo_jax.flamingo.scan); the patterns are `config.model.trainable` (the paper's choice:
flamingo_jax.configs.base.TRAINABLE). Gradients and optimiser state exist for the trainable
part only.
"""

import re
from collections.abc import Sequence

from flax import traverse_util


def is_trainable(path: str, patterns: Sequence[str]) -> bool:
  return any(re.search(p, path) for p in patterns)


def split(params, patterns: Sequence[str]):
  """params -> (trainable, frozen): two trees with disjoint leaves that `merge` puts back."""
  flat = traverse_util.flatten_dict(params, sep="/")
  trainable = {k: v for k, v in flat.items() if is_trainable(k, patterns)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return (traverse_util.unflatten_dict(trainable, sep="/"),
          traverse_util.unflatten_dict(frozen, sep="/"))


def merge(trainable, frozen):
  """Inverse of `split`."""
  flat = traverse_util.flatten_dict(frozen, sep="/")
  flat.update(traverse_util.flatten_dict(trainable, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")
