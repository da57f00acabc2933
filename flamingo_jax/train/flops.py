"""FLOPs of a program counted from its jaxpr: 2 per multiply-add of every matmul and
convolution, each loop body times its trip count.

XLA's cost analysis counts a while loop's body once, so with `scan_layers` (and microbatches)
it misses most of the model; the jaxpr still knows every scan's length.
"""

import math

import jax
from jax.extend import core


def _sub_jaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, core.Jaxpr):
        yield item


def equation_flops(eqn) -> float:
  """FLOPs of one matmul or convolution equation; 0 for anything else."""
  name = eqn.primitive.name
  if name not in ("dot_general", "conv_general_dilated"):
    return 0.0
  out = eqn.outvars[0].aval.shape
  if name == "dot_general":
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)
  rhs = eqn.invars[1].aval.shape
  out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
  # Each output value takes (input features / groups) x kernel window multiply-adds.
  return 2.0 * math.prod(out) * math.prod(rhs) / out_features


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a jaxpr; a scan's body counts `length` times, a cond's
  costliest branch once, a while loop's body once (its trip count is not known)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    inner = [jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
    if eqn.primitive.name == "scan":
      total += eqn.params["length"] * sum(inner)
    elif eqn.primitive.name == "cond":
      total += max(inner, default=0.0)
    else:
      total += sum(inner) + equation_flops(eqn)
  return total


def count(fn, *args) -> float:
  """FLOPs of `fn(*args)` (arrays or ShapeDtypeStructs), all devices together."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
