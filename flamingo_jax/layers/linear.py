"""Matrix products of activations with weights, computed as one 2-D matmul.

XLA:CPU differentiates a dot whose activations keep their batch and length dimensions by
transposing the output gradient into a new layout for the weight gradient, a slow strided copy.
A resampler FFN (768 -> 3072 -> 768, forward and backward) takes 135 ms on activations shaped
[12, 64, 768] and 94 ms on the same flattened to [768, 768]; the benchmark's training step
(benchmarks/compare_openflamingo.py) went from 3.56 s to 3.09 s. Flattening the leading
dimensions is a free reshape that leaves the weight gradient a plain [in, N] . [N, out] product.
"""

import math

import jax


def flat_matmul(x: jax.Array, kernel: jax.Array, num_in: int = 1, precision=None) -> jax.Array:
  """x [..., *in] . kernel [*in, *out] -> [..., *out] (`num_in` contracted dimensions)."""
  lead, contracted = x.shape[:x.ndim - num_in], kernel.shape[:num_in]
  out = kernel.shape[num_in:]
  y = jax.lax.dot(x.reshape(math.prod(lead), math.prod(contracted)),
                  kernel.reshape(math.prod(contracted), math.prod(out)), precision=precision)
  return y.reshape(*lead, *out)


def flat_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None):
  """`nn.Dense`'s contraction (lhs's last dimension with rhs's first) by `flat_matmul`."""
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())):
    raise ValueError(f"Not a dense layer's contraction: {dimension_numbers}.")
  return flat_matmul(lhs, rhs, 1, precision)
