"""GATED XATTN-DENSE (paper appendix A.1.2), inserted before frozen LM blocks.

y = y + tanh(a_attn) * XAttn(q=y, kv=visual); y = y + tanh(a_ffw) * FFW(y). Both gates start
at 0, so at initialisation the model computes exactly what the frozen LM computes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flamingo_jax.flamingo.resampler import FeedForward
from flamingo_jax.layers.attention import KVCache, MultiHeadAttention
from flamingo_jax.layers.norms import make_norm


class GatedCrossAttentionBlock(nn.Module):
  """x: [B, L, D]; media: visual tokens [B, N, Dv], or their keys and values (below);
  mask: bool [B, 1, L, N] -> [B, L, D].

  A token whose mask row is empty (no image at or before it) gets an exactly zero
  cross-attention output, not the uniform average an all-masked softmax would give.
  `kv_norm` is the paper's LayerNorm on the key/value input (OpenFlamingo has none).

  Decoding computes the keys and values of the media once per prompt: with x None the block
  returns them (a KVCache [B, N, H, Dh]), which may then stand in for the visual tokens.
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
  def __call__(self, x, media, mask):
    kw = dict(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = lambda name: jnp.tanh(self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros, ()), (), self.param_dtype))
    attention = MultiHeadAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="attention")
    if self.kv_norm and not isinstance(media, KVCache):
      media = make_norm("layer", name="kv_norm", **kw)(media)
    if x is None:
      return attention(None, media, None)[0]
    queries = make_norm("layer", name="norm", **kw)(x)
    attended, _ = attention(queries, media, mask)
    attended = jnp.where(mask.any(axis=-1).transpose(0, 2, 1), attended, 0)
    x = x + gate("attention_gate").astype(self.dtype) * attended
    ffw = FeedForward(self.mlp_ratio, self.activation, self.norm_eps, self.dtype,
                      self.param_dtype, name="ffw")(x)
    return x + gate("ffw_gate").astype(self.dtype) * ffw
