"""One decoder-only LM family whose config switches cover LLaMA-style models (RMSNorm, RoPE,
SwiGLU, grouped-query attention, optional QKV bias, tied or untied embeddings), GPT-2-style
models (LayerNorm, learned positions, GELU MLP, biases), GPT-NeoX (parallel residual, partial
rotary), MPT (ALiBi, bias-free LayerNorm and projections, clipped QKV) and Chinchilla (RMSNorm,
Transformer-XL relative positions, GELU MLP).

The LM exposes its pieces (`embed`, `blocks` / `extend_blocks`, `head`) so that Flamingo can
interleave its gated cross-attention layers between the frozen blocks without copying them. A full
forward pass over a sequence (`__call__`) and a decoding step over new tokens with a `DecodeState`
(`extend`) are separate methods, down to every block and attention layer. `num_extra_tokens` new
token rows (Flamingo's `<image>` and `<EOC>`) live in their own parameters, `extra_embedding`
and, for untied heads, `extra_unembedding`, so that they alone can be trained.
"""

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from flamingo_jax.layers.attention import KVCache, MultiHeadAttention, Rope
from flamingo_jax.layers.mlp import Mlp, dense
from flamingo_jax.layers.norms import make_norm
from flamingo_jax.layers.remat import remat


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Shape and architecture switches of a decoder-only LM."""
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None    # None: multi-head attention (= num_heads).
  head_dim: int | None = None        # None: embed_dim // num_heads.
  norm: str = "rms"                  # "rms" | "layer"
  norm_eps: float = 1e-5
  activation: str = "silu"
  gated_mlp: bool = True             # SwiGLU when activation is "silu".
  mlp_bias: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  norm_bias: bool = True             # LayerNorm only.
  position: str = "rope"             # "rope" | "learned" | "relative" | "alibi" | "none"
  rope_theta: float = 10000.0
  rope_fraction: float = 1.0         # GPT-NeoX rotary_pct.
  rope_scaling: str = "none"         # "none" | "linear" | "llama3" (LLaMA 3.1+); see Rope.
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 only, as the next two.
  rope_high_freq_factor: float = 4.0
  rope_original_max_length: int = 8192
  sliding_window: int = 0            # Mistral: a token sees the last w tokens; 0: all before it.
  attention_kind: str = "materialized"  # "fused": layers.attention.ATTENTION_KINDS.
  alibi_bias_max: float = 8.0        # MPT: sets the ALiBi slopes.
  clip_qkv: float | None = None      # MPT: clip q, k, v to [-clip_qkv, clip_qkv].
  max_length: int = 2048             # Learned position table size.
  tie_embeddings: bool = False
  parallel_residual: bool = False    # GPT-NeoX: x + attn(ln1(x)) + mlp(ln2(x)).
  num_extra_tokens: int = 0          # Trainable new tokens appended to the vocabulary.

  @classmethod
  def from_dict(cls, d: Any) -> "LMConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown LM config fields {sorted(unknown)}.")
    return cls(**d)

  @property
  def rope(self) -> Rope:
    return Rope(self.rope_theta, self.rope_fraction, self.rope_scaling, self.rope_scaling_factor,
                self.rope_low_freq_factor, self.rope_high_freq_factor,
                self.rope_original_max_length)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dh(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def total_vocab(self) -> int:
    return self.vocab_size + self.num_extra_tokens


@flax.struct.dataclass
class DecodeState:
  """Everything decoding needs between calls; no state hides inside the modules.

  caches: {layer index: KVCache [B, S, K, Dh]} for every block that `DecoderLM.extend_blocks`
  runs (a Flamingo with scanned layers keeps the scanned blocks' caches itself); key_positions:
  [B, S] int32, the position of the token in each cache slot, -1 for empty or padding slots;
  index: int32 [], next free slot.
  """
  caches: dict[int, KVCache]
  key_positions: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, config: LMConfig, batch: int, length: int, dtype=jnp.float32, layers=None):
    """Empty caches for `layers` (block indices; default all of them)."""
    layers = range(config.num_layers) if layers is None else layers
    return cls(
        caches={i: KVCache.zeros(batch, length, config.kv_heads, config.dh, dtype)
                for i in layers},
        key_positions=jnp.full((batch, length), -1, jnp.int32),
        index=jnp.zeros((), jnp.int32))


def attention_mask(q_positions: jax.Array, kv_positions: jax.Array,
                   sliding_window: int = 0) -> jax.Array:
  """Causal mask over positions; negative key positions (empty or padding) are never seen, nor,
  with a `sliding_window` w > 0, keys w or more positions back (transformers' rule).

  q_positions: [B, Lq]; kv_positions: [B, S] -> bool [B, 1, Lq, S].
  """
  kv, q = kv_positions[:, None, :], q_positions[:, :, None]
  mask = (kv >= 0) & (kv <= q)
  if sliding_window:
    mask &= kv > q - sliding_window
  return mask[:, None]


class DecoderBlock(nn.Module):
  """A pre-norm transformer block, x: [B, L, D] -> [B, L, D]: over a whole sequence
  (`__call__`), or over new tokens after the cached ones (`extend`)."""
  config: LMConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    norm = lambda: make_norm(c.norm, eps=c.norm_eps, use_bias=c.norm_bias, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    self.attention_norm = norm()
    self.attention = MultiHeadAttention(
        num_heads=c.num_heads, head_dim=c.dh, num_kv_heads=c.num_kv_heads,
        qkv_bias=c.qkv_bias, out_bias=c.out_bias,
        position=c.position if c.position in ("rope", "relative", "alibi") else "none",
        rope=c.rope, alibi_bias_max=c.alibi_bias_max, attention_kind=c.attention_kind,
        clip_qkv=c.clip_qkv, dtype=self.dtype, param_dtype=self.param_dtype)
    self.mlp_norm = norm()
    self.mlp = Mlp(c.mlp_dim, c.activation, c.gated_mlp, c.mlp_bias, self.dtype, self.param_dtype)

  def __call__(self, x, positions, mask):
    """positions: [B, L]; mask: bool [B, 1, L, L]."""
    h = self.attention_norm(x)
    return self._residual(x, self.attention(h, h, mask, positions, positions))

  def extend(self, x, q_positions, kv_positions, mask, cache: KVCache, cache_index):
    """x: the new tokens [B, L, D] written at slots cache_index... of `cache`; q_positions
    [B, L], kv_positions [B, S], mask bool [B, 1, L, S] (see MultiHeadAttention.extend).
    Returns (x, the updated cache)."""
    h, cache = self.attention.extend(self.attention_norm(x), mask, q_positions, kv_positions,
                                     cache, cache_index)
    return self._residual(x, h), cache

  def _residual(self, x, attended):
    """x plus the attention output and the MLP's, in sequence or in parallel."""
    if self.config.parallel_residual:
      x = x + attended + self.mlp(self.mlp_norm(x))
    else:
      x = x + attended
      x = x + self.mlp(self.mlp_norm(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLM(nn.Module):
  """tokens [B, L] int32 -> logits [B, L, vocab_size + num_extra_tokens] float32.

  remat: the rematerialisation policy of each block (flamingo_jax.layers.remat).
  """
  config: LMConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"

  def setup(self):
    c = self.config
    init = nn.initializers.normal(0.02)
    self.embedder = nn.Embed(
        c.vocab_size, c.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")))
    if c.num_extra_tokens:
      self.extra_embedding = self.param(
          "extra_embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
          (c.num_extra_tokens, c.embed_dim), self.param_dtype)
      if not c.tie_embeddings:
        self.extra_unembedding = self.param(
            "extra_unembedding", nn.with_logical_partitioning(init, ("embed", "vocab")),
            (c.embed_dim, c.num_extra_tokens), self.param_dtype)
    if c.position == "learned":
      self.position_embedder = nn.Embed(
          c.max_length, c.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
          embedding_init=nn.with_logical_partitioning(init, ("length", "embed")))
    block = remat(DecoderBlock, self.remat)
    self.layers = [block(c, self.dtype, self.param_dtype) for _ in range(c.num_layers)]
    self.final_norm = make_norm(c.norm, eps=c.norm_eps, use_bias=c.norm_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    if not c.tie_embeddings:
      self.unembed = dense(c.vocab_size, ("embed", "vocab"), use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype, kernel_init=init)

  def embed(self, tokens, positions):
    """tokens, positions: [B, L] int32 -> [B, L, D]. Ids >= vocab_size are the extra tokens."""
    c = self.config
    x = self.embedder(jnp.minimum(tokens, c.vocab_size - 1))
    if c.num_extra_tokens:
      extra = jnp.asarray(self.extra_embedding, self.dtype)[
          jnp.clip(tokens - c.vocab_size, 0, c.num_extra_tokens - 1)]
      x = jnp.where((tokens >= c.vocab_size)[..., None], extra, x)
    if c.position == "learned":
      x = x + self.position_embedder(jnp.clip(positions, 0, c.max_length - 1))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def blocks(self, layers, x, positions, mask):
    """Runs the blocks `layers` (indices, in order) over a whole sequence x [B, L, D];
    positions: [B, L]; mask: bool [B, 1, L, L] (`attention_mask`)."""
    for i in layers:
      x = self.layers[i](x, positions, mask)
    return x

  def extend_blocks(self, layers, x, q_positions, kv_positions, mask, state: DecodeState):
    """Runs the blocks `layers` over new tokens x [B, L, D] with the caches of `state`;
    kv_positions, mask: from `cache_positions`. Returns x and {layer index: its updated
    KVCache}."""
    caches = {}
    for i in layers:
      x, caches[i] = self.layers[i].extend(x, q_positions, kv_positions, mask, state.caches[i],
                                           state.index)
    return x, caches

  def head(self, x):
    """Final norm and logits: [B, L, D] -> [B, L, V] float32."""
    c = self.config
    x = self.final_norm(x)
    if c.tie_embeddings:
      logits = self.embedder.attend(x)
    else:
      logits = self.unembed(x)
    if c.num_extra_tokens:
      extra = (self.extra_embedding.T if c.tie_embeddings else self.extra_unembedding)
      logits = jnp.concatenate([logits, x @ jnp.asarray(extra, self.dtype)], axis=-1)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, tokens, positions=None):
    """tokens [B, L] int32 -> logits [B, L, V] float32.

    positions: [B, L] int32, default 0..L-1; -1 marks padding that no token attends to.
    """
    chex.assert_rank(tokens, 2)
    positions = default_positions(tokens) if positions is None else positions
    x = self.embed(tokens, positions)
    x = self.blocks(range(self.config.num_layers), x, positions,
                    attention_mask(positions, positions, self.config.sliding_window))
    return self.head(x)

  def extend(self, tokens, positions, state: DecodeState, last_only: bool = False):
    """Continues the decoding `state` with tokens [B, L] at positions [B, L]: (logits [B, L, V],
    or [B, 1, V] of the last position when `last_only`, as reading a prompt needs; the
    advanced state)."""
    chex.assert_rank(tokens, 2)
    kv_pos, mask = cache_positions(positions, state, self.config.sliding_window)
    x = self.embed(tokens, positions)
    x, caches = self.extend_blocks(range(self.config.num_layers), x, positions, kv_pos, mask,
                                   state)
    logits = self.head(x[:, -1:] if last_only else x)
    return logits, advance(state, caches, kv_pos, tokens.shape[1])


def default_positions(tokens):
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def cache_positions(positions, state: DecodeState, sliding_window: int = 0):
  """(key positions [B, S], mask bool [B, 1, L, S]) of new tokens at positions [B, L] written
  at the state's next free slot. A sliding window masks the slots it has left behind (they are
  kept: the cache is as long as the sequence)."""
  kv_pos = jax.lax.dynamic_update_slice_in_dim(state.key_positions, positions, state.index, 1)
  return kv_pos, attention_mask(positions, kv_pos, sliding_window)


def advance(state: DecodeState, caches: dict, kv_pos, length: int) -> DecodeState:
  return DecodeState(caches=caches, key_positions=kv_pos, index=state.index + length)
