"""GATED XATTN-DENSE (paper appendix A.1.2), inserted before frozen LM blocks.

y = y + tanh(a_attn) * XAttn(q=y, kv=visual); y = y + tanh(a_ffw) * FFW(y). Both gates start
at 0, so at initialisation the model computes exactly what the frozen LM computes.

Training and a full forward pass read the visual tokens (`__call__`); decoding projects them to
the block's keys and values once per prompt (`media_kv`) and attends to those at every step
(`attend_to`). Both compute the same.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flamingo_jax.flamingo.resampler import FeedForward
from flamingo_jax.layers.attention import KVCache, MultiHeadAttention
from flamingo_jax.layers.norms import make_norm


class GatedCrossAttentionBlock(nn.Module):
  """x: [B, L, D]; media: visual tokens [B, N, Dv]; mask: bool [B, 1, L, N] -> [B, L, D].

  A token whose mask row is empty (no image at or before it) gets an exactly zero
  cross-attention output, not the uniform average an all-masked softmax would give.
  `kv_norm` is the paper's LayerNorm on the key/value input (OpenFlamingo has none).
  The sizes and switches come from the config's `xattn` section (flamingo_jax.configs.base).
  """
  num_heads: int
  head_dim: int
  mlp_ratio: int
  activation: str
  kv_norm: bool
  norm_eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = lambda name: self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros, ()), (), self.param_dtype)
    self.attention = MultiHeadAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                        param_dtype=self.param_dtype)
    if self.kv_norm:
      self.media_norm = make_norm("layer", name="kv_norm", **kw)
    self.norm = make_norm("layer", **kw)
    self.ffw = FeedForward(self.mlp_ratio, self.activation, self.norm_eps, self.dtype,
                           self.param_dtype)
    self.attention_gate, self.ffw_gate = gate("attention_gate"), gate("ffw_gate")

  def __call__(self, x, media, mask):
    return self.attend_to(x, self.media_kv(media), mask)

  def media_kv(self, media) -> KVCache:
    """media [B, N, Dv] -> this block's keys and values of them, KVCache [B, N, H, Dh]."""
    return self.attention.key_values(self.media_norm(media) if self.kv_norm else media)

  def attend_to(self, x, media_kv: KVCache, mask):
    """The block's output for x [B, L, D] over the keys and values of `media_kv`."""
    attended = self.attention.attend_to(self.norm(x), media_kv, mask)
    attended = jnp.where(mask.any(axis=-1).transpose(0, 2, 1), attended, 0)
    x = x + jnp.tanh(self.attention_gate).astype(self.dtype) * attended
    return x + jnp.tanh(self.ffw_gate).astype(self.dtype) * self.ffw(x)
