"""Position-wise feed-forward blocks: plain (GELU, squared ReLU, ...) or gated (SwiGLU)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.layers.linear import flat_dot_general

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    # Flamingo's resampler and gated blocks (So et al., Primer).
    "squared_relu": lambda x: jnp.square(jax.nn.relu(x)),
    "silu": jax.nn.silu,
}


def activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"Unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}.") from None


def dense(features: int, axes: tuple[str, str], *, use_bias: bool, dtype, param_dtype,
          name: str | None = None, kernel_init=nn.initializers.lecun_normal()) -> nn.Dense:
  """A Dense layer whose kernel and bias carry logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      dot_general=flat_dot_general,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
      name=name)


class Mlp(nn.Module):
  """`wo(act(wi(x)))`, or `wo(act(gate(x)) * up(x))` when `gated` (SwiGLU / GeGLU).

  x: [..., D] -> [..., D].
  """
  hidden_dim: int
  activation: str = "gelu"
  gated: bool = False
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    act = activation(self.activation)
    if self.gated:
      h = act(dense(self.hidden_dim, ("embed", "mlp"), name="gate", **kw)(x))
      h = h * dense(self.hidden_dim, ("embed", "mlp"), name="up", **kw)(x)
    else:
      h = act(dense(self.hidden_dim, ("embed", "mlp"), name="wi", **kw)(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp")) if h.ndim == 3 else h
    return dense(x.shape[-1], ("mlp", "embed"), name="wo", **kw)(h)
