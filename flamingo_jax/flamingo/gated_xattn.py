"""GATED XATTN-DENSE (paper appendix A.1.2), inserted before frozen LM blocks.

y = y + tanh(a_attn) * XAttn(q=y, kv=visual); y = y + tanh(a_ffw) * FFW(y). Both gates start
at 0, so at initialisation the model computes exactly what the frozen LM computes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flamingo_jax.flamingo.resampler import FeedForward
from flamingo_jax.layers.attention import MultiHeadAttention
from flamingo_jax.layers.norms import make_norm


class GatedCrossAttentionBlock(nn.Module):
  """x: [B, L, D]; visual: [B, N, Dv]; mask: bool [B, 1, L, N] -> [B, L, D].

  A token whose mask row is empty (no image at or before it) gets an exactly zero
  cross-attention output, not the uniform average an all-masked softmax would give.
  `kv_norm` is the paper's LayerNorm on the key/value input (OpenFlamingo has none).
  """
  num_heads: int
  head_dim: int
  mlp_ratio: int = 4
  activation: str = "squared_relu"
  kv_norm: bool = True
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, visual, mask):
    kw = dict(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = lambda name: jnp.tanh(self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros, ()), (), self.param_dtype))
    queries = make_norm("layer", name="norm", **kw)(x)
    if self.kv_norm:
      visual = make_norm("layer", name="kv_norm", **kw)(visual)
    attended, _ = MultiHeadAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name="attention")(
                                         queries, visual, mask)
    attended = jnp.where(mask.any(axis=-1).transpose(0, 2, 1), attended, 0)
    x = x + gate("attention_gate").astype(self.dtype) * attended
    ffw = FeedForward(self.mlp_ratio, self.activation, self.norm_eps, self.dtype,
                      self.param_dtype, name="ffw")(x)
    return x + gate("ffw_gate").astype(self.dtype) * ffw
