"""Normalisation layers with logically partitioned parameters."""

import flax.linen as nn
import jax.numpy as jnp


def make_norm(kind: str, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32,
              use_bias: bool = True, axis_name: str = "embed",
              name: str | None = None) -> nn.Module:
  """Returns a LayerNorm (`kind="layer"`) or RMSNorm (`kind="rms"`) over the last axis, whose
  logical name is `axis_name` ("kv" for a norm within each attention head).

  Statistics are always reduced in float32 (flax's default), whatever `dtype` is.
  """
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, (axis_name,))
  if kind == "layer":
    return nn.LayerNorm(
        epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
        name=name)
  if kind == "rms":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=scale_init, name=name)
  raise ValueError(f"Unknown norm kind {kind!r}; expected 'layer' or 'rms'.")
