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


GATES = ("scalar", "vector")


class GatedCrossAttentionBlock(nn.Module):
  """x: [B, L, D]; media: visual tokens [B, N, Dv]; mask: bool [B, 1, L, N] -> [B, L, D].

  A token whose mask row is empty (no image at or before it) gets an exactly zero
  cross-attention output, not the uniform average an all-masked softmax would give.
  `kv_norm` is the paper's LayerNorm on the key/value input (OpenFlamingo and IDEFICS have
  none). The sizes and switches come from the config's `xattn` section
  (flamingo_jax.configs.base); those the paper's blocks leave at their defaults here are
  IDEFICS's: `norm_type` "rms" pre-norms, `qk_norm` on each head's queries and keys, a `gated_mlp`
  (SwiGLU) feed-forward, and "vector" gates, one tanh gate per feature ([D]) rather than one
  per block.
  """
  num_heads: int
  head_dim: int
  mlp_ratio: float
  activation: str
  kv_norm: bool
  norm_eps: float
  norm_type: str = "layer"
  qk_norm: str = "none"
  gated_mlp: bool = False
  gate: str = "scalar"
  attention_kind: str = "materialized"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.gate not in GATES:
      raise ValueError(f"Unknown gate {self.gate!r}; choose from {GATES}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.attention = MultiHeadAttention(
        self.num_heads, self.head_dim, qk_norm=self.qk_norm, qk_norm_eps=self.norm_eps,
        attention_kind=self.attention_kind, **kw)
    if self.kv_norm:
      self.media_norm = make_norm("layer", eps=self.norm_eps, name="kv_norm", **kw)
    self.norm = make_norm(self.norm_type, eps=self.norm_eps, **kw)
    self.ffw = FeedForward(self.mlp_ratio, self.activation, self.norm_eps, self.norm_type,
                           self.gated_mlp, **kw)

  @nn.compact
  def gates(self, width: int):
    """(attention gate, feed-forward gate): scalars [] or vectors [D], both starting at 0."""
    shape, axes = ((), ()) if self.gate == "scalar" else ((width,), ("embed",))
    gate = lambda name: self.param(
        name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape, self.param_dtype)
    return gate("attention_gate"), gate("ffw_gate")

  def __call__(self, x, media, mask):
    return self.attend_to(x, self.media_kv(media), mask)

  def media_kv(self, media) -> KVCache:
    """media [B, N, Dv] -> this block's keys and values of them, KVCache [B, N, H, Dh]."""
    return self.attention.key_values(self.media_norm(media) if self.kv_norm else media)

  def attend_to(self, x, media_kv: KVCache, mask):
    """The block's output for x [B, L, D] over the keys and values of `media_kv`."""
    attention_gate, ffw_gate = self.gates(x.shape[-1])
    attended = self.attention.attend_to(self.norm(x), media_kv, mask)
    attended = jnp.where(mask.any(axis=-1).transpose(0, 2, 1), attended, 0)
    x = x + jnp.tanh(attention_gate).astype(self.dtype) * attended
    return x + jnp.tanh(ffw_gate).astype(self.dtype) * self.ffw(x)
