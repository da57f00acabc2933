"""Normalisation layers with logically partitioned parameters."""

import flax.linen as nn
import jax.numpy as jnp


def make_norm(kind: str, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32,
              use_bias: bool = True, name: str | None = None) -> nn.Module:
  """Returns a LayerNorm (`kind="layer"`) or RMSNorm (`kind="rms"`) over the last axis.

  Statistics are always reduced in float32 (flax's default), whatever `dtype` is.
  """
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if kind == "layer":
    return nn.LayerNorm(
        epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name)
  if kind == "rms":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      scale_init=scale_init, name=name)
  raise ValueError(f"Unknown norm kind {kind!r}; expected 'layer' or 'rms'.")
