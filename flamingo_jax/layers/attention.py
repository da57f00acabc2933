"""Multi-head attention: self or cross, grouped-query, RoPE, ALiBi or Transformer-XL relative
positions, with an explicit key/value cache for decoding and cross-attention over keys and
values projected once (`MultiHeadAttention`'s methods are its modes).

Shapes: B batch, Lq / Lk query / key length, H query heads, K key/value heads (H % K == 0),
Dh head width.
"""

import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.layers.linear import flat_matmul
from flamingo_jax.layers.norms import make_norm

NEG_INF = -1e30  # Finite, so an all-masked row gives a uniform softmax rather than NaN.
POSITIONS = ("none", "rope", "alibi", "relative")
QK_NORMS = ("none", "layer", "rms")
# "materialized": the [Lq, Lk] weights computed here (and sown for inspection); "fused":
# jax.nn.dot_product_attention, which takes cuDNN's flash attention on a GPU where it applies
# and XLA's elsewhere, with no weights to inspect.
ATTENTION_KINDS = ("materialized", "fused")
ROPE_SCALINGS = ("none", "linear", "llama3")


@flax.struct.dataclass
class KVCache:
  """Keys and values, k, v: [B, S, K, Dh]: a decoding cache of the tokens seen so far, or the
  projection of inputs that cross-attention reads many times (`MultiHeadAttention.key_values`)."""
  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch: int, length: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (batch, length, num_kv_heads, head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


@dataclasses.dataclass(frozen=True)
class Rope:
  """Rotary position embedding settings: base `theta`, the `fraction` of each head rotated
  (GPT-NeoX's rotary_pct), and how the frequencies are rescaled for longer contexts:

  "none": theta^(-2i/d), as trained;
  "linear": every frequency divided by `factor` (position interpolation);
  "llama3": LLaMA 3.1+, following transformers' `_compute_llama3_parameters` (5.x): wavelengths
    under original_max_length / high_freq_factor kept, those over original_max_length /
    low_freq_factor divided by `factor`, and a linear blend of the two in between.
  """
  theta: float = 10000.0
  fraction: float = 1.0
  scaling: str = "none"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_length: int = 8192

  def __post_init__(self):
    if self.scaling not in ROPE_SCALINGS:
      raise ValueError(f"Unknown RoPE scaling {self.scaling!r}; choose from {ROPE_SCALINGS}.")

  def inverse_frequencies(self, rotated: int) -> np.ndarray:
    """float32 [rotated // 2], the angle per position of each rotated pair."""
    exponents = np.arange(0, rotated, 2, dtype=np.float32) / np.float32(rotated)
    inverse = np.float32(1.0) / np.float32(self.theta) ** exponents
    if self.scaling == "linear":
      return inverse / np.float32(self.factor)
    if self.scaling == "none":
      return inverse
    wavelength = np.float32(2 * math.pi) / inverse
    scaled = np.where(wavelength > self.original_max_length / self.low_freq_factor,
                      inverse / np.float32(self.factor), inverse)
    smooth = ((self.original_max_length / wavelength - self.low_freq_factor)
              / (self.high_freq_factor - self.low_freq_factor))
    blended = (1 - smooth) * scaled / self.factor + smooth * scaled
    medium = ((wavelength >= self.original_max_length / self.high_freq_factor)
              & (wavelength <= self.original_max_length / self.low_freq_factor))
    return np.where(medium, blended, scaled).astype(np.float32)


def rotary_embedding(x: jax.Array, positions: jax.Array, rope: Rope) -> jax.Array:
  """RoPE in the rotate-half layout (Hugging Face LLaMA / GPT-NeoX).

  x: [B, L, H, Dh]; positions: [B, L]. Only the first `rope.fraction` of each head is rotated.
  """
  rot = int(x.shape[-1] * rope.fraction)
  x_rot, x_pass = x[..., :rot], x[..., rot:]
  angles = positions[..., None].astype(jnp.float32) * rope.inverse_frequencies(rot)
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, L, 1, rot]
  first, second = jnp.split(x_rot, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  out = x_rot.astype(jnp.float32) * jnp.cos(angles) + rotated.astype(jnp.float32) * jnp.sin(angles)
  return jnp.concatenate([out.astype(x.dtype), x_pass], axis=-1)


def sinusoid(positions: jax.Array, dim: int) -> jax.Array:
  """Transformer-XL sinusoidal encoding [sin | cos]. positions: [N] -> [N, dim]."""
  inv_freq = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = positions[:, None].astype(jnp.float32) * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def alibi_slopes(num_heads: int, bias_max: float = 8.0) -> jax.Array:
  """ALiBi's per-head slopes [H] (Press et al.), as MPT computes them: 2^(-bias_max * h / n) for
  h = 1..n, n the next power of two; other head counts take the odd then the even slopes of n."""
  n = 2 ** math.ceil(math.log2(num_heads))
  slopes = 2.0 ** (-bias_max * jnp.arange(1, n + 1, dtype=jnp.float32) / n)
  if n != num_heads:
    slopes = jnp.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
  return slopes


def alibi_bias(q_positions: jax.Array, kv_positions: jax.Array, num_heads: int,
               bias_max: float = 8.0) -> jax.Array:
  """-slope * (query position - key position): q_positions [B, Lq], kv_positions [B, S] ->
  [B, H, Lq, S]."""
  distance = (kv_positions[:, None, :] - q_positions[:, :, None]).astype(jnp.float32)
  return alibi_slopes(num_heads, bias_max)[None, :, None, None] * distance[:, None]


def attention_weights(q, k, mask, bias=None):
  """softmax(q k^T / sqrt(Dh) + bias, where mask): float32 [B, H, Lq, Lk].

  q: [B, Lq, H, Dh]; k: [B, Lk, K, Dh]; mask: bool [B, 1 or H, Lq, Lk];
  bias: [B, H, Lq, Lk] or None.
  """
  b, lq, h, dh = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(b, lq, kv_heads, h // kv_heads, dh)
  # Scores accumulate and come out in float32: rounding them to bfloat16 before the softmax
  # would cost about 3 significant digits on every attention weight.
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k,
                      preferred_element_type=jnp.float32) / jnp.sqrt(dh)
  logits = logits.reshape(b, h, lq, -1)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  logits = jnp.where(mask, logits, NEG_INF)
  return jax.nn.softmax(logits, axis=-1)


def attend(weights, v):
  """weights [B, H, Lq, Lk] . v [B, Lk, K, Dh] -> [B, Lq, H, Dh]."""
  b, h, lq, _ = weights.shape
  kv_heads, dh = v.shape[2:]
  probs = weights.astype(v.dtype).reshape(b, kv_heads, h // kv_heads, lq, -1)
  return jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, lq, h, dh)


def dot_product_attention(q, k, v, mask, bias=None):
  """softmax(q k^T / sqrt(Dh) + bias, where mask) v.

  q: [B, Lq, H, Dh]; k, v: [B, Lk, K, Dh]; mask: bool [B, 1 or H, Lq, Lk];
  bias: [B, H, Lq, Lk] or None. Returns [B, Lq, H, Dh].
  """
  return attend(attention_weights(q, k, mask, bias), v)


class Projection(nn.Module):
  """x [..., *in] -> x . kernel [*in, *features] (+ bias [*features]), every kernel dimension
  named by `axes`.

  flax's DenseGeneral would do, but it initialises a flattened 2-D kernel, which a logical
  sharding constraint of the true rank rejects under a mesh. Same initial values: LeCun normal
  with fan-in the product of the input dimensions.
  """
  features: tuple[int, ...]
  axes: tuple[str, ...]
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    num_in = len(self.axes) - len(self.features)
    fan = tuple(range(len(self.axes)))
    init = nn.initializers.lecun_normal(in_axis=fan[:num_in], out_axis=fan[num_in:])
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                        x.shape[x.ndim - num_in:] + tuple(self.features), self.param_dtype)
    y = flat_matmul(x.astype(self.dtype), kernel.astype(self.dtype), num_in)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros, self.axes[num_in:]), tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """Attention of queries over keys and values, in three modes, each a method of its own:

  `__call__(inputs_q, inputs_kv, mask, ...)`: over all of `inputs_kv` (the same array for
    self-attention), as training and a full forward pass run it;
  `extend(inputs, mask, ..., cache, cache_index)`: self-attention of new tokens while decoding:
    their keys and values are written into the cache, and they attend over every cached slot;
  `key_values(inputs_kv)`, then `attend_to(inputs_q, key_values, mask)`: cross-attention over
    inputs that do not change while decoding (Flamingo's media), projected once.

  position: "none", "rope" (rotary on q and k, as `rope` sets), "alibi" (MPT: a per-head linear
  penalty on the distance, `alibi_bias_max` setting the slopes) or "relative" (Transformer-XL,
  as in Gopher and Chinchilla: learned content and position biases and a projection of
  sinusoids of the distance).
  clip_qkv: clip the projected queries, keys and values to [-clip_qkv, clip_qkv] (MPT).
  qk_norm: "layer" or "rms" normalises each head's projected query and key over its Dh
  features (IDEFICS's `qk_layer_norms`), before any rotary embedding; "none" leaves them.
  attention_kind: how the weights are computed (`ATTENTION_KINDS`); the same result within
  rounding.
  """
  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  qkv_bias: bool = False
  out_bias: bool = False
  position: str = "none"
  rope: Rope = Rope()
  alibi_bias_max: float = 8.0
  clip_qkv: float | None = None
  qk_norm: str = "none"
  qk_norm_eps: float = 1e-5
  attention_kind: str = "materialized"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.attention_kind not in ATTENTION_KINDS:
      raise ValueError(f"Unknown attention kind {self.attention_kind!r}; choose from "
                       f"{ATTENTION_KINDS}.")
    if self.position not in POSITIONS:
      raise ValueError(f"Unknown attention position scheme {self.position!r}; choose from "
                       f"{POSITIONS}.")
    if self.qk_norm not in QK_NORMS:
      raise ValueError(f"Unknown q/k norm {self.qk_norm!r}; choose from {QK_NORMS}.")
    if self.qk_norm != "none":
      norm = lambda: make_norm(self.qk_norm, eps=self.qk_norm_eps, dtype=self.dtype,
                               param_dtype=self.param_dtype, axis_name="kv")
      self.query_norm, self.key_norm = norm(), norm()
    heads = lambda n, use_bias: Projection((n, self.head_dim), ("embed", "heads", "kv"), use_bias,
                                           self.dtype, self.param_dtype)
    kv_heads = self.num_kv_heads or self.num_heads
    self.query = heads(self.num_heads, self.qkv_bias)
    self.key = heads(kv_heads, self.qkv_bias)
    self.value = heads(kv_heads, self.qkv_bias)
    if self.position == "relative":
      bias = lambda name: self.param(
          name, nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
          (self.num_heads, self.head_dim), self.param_dtype)
      self.content_bias, self.position_bias = bias("content_bias"), bias("position_bias")
      self.relative = heads(self.num_heads, False)

  def key_values(self, inputs_kv) -> KVCache:
    """inputs_kv [B, Lk, Dkv] -> their keys and values, KVCache [B, Lk, K, Dh] (no positions)."""
    k = self._project(self.key, inputs_kv)
    if self.qk_norm != "none":
      k = self.key_norm(k)
    return KVCache(k=k, v=self._project(self.value, inputs_kv))

  def queries(self, inputs_q):
    """inputs_q [B, Lq, Dq] -> queries [B, Lq, H, Dh] (no positions)."""
    q = self._project(self.query, inputs_q)
    return self.query_norm(q) if self.qk_norm != "none" else q

  def __call__(self, inputs_q, inputs_kv, mask, q_positions=None, kv_positions=None):
    """inputs_q: [B, Lq, Dq]; inputs_kv: [B, Lk, Dkv]; mask: bool [B, 1|H, Lq, Lk];
    q_positions [B, Lq], kv_positions [B, Lk]: what the position schemes other than "none"
    read. Returns [B, Lq, Dq]."""
    kv = self.key_values(inputs_kv)
    q = self.queries(inputs_q)
    k = kv.k
    if self.position == "rope":
      q = rotary_embedding(q, q_positions, self.rope)
      k = rotary_embedding(k, kv_positions, self.rope)
    q, bias = self._position_terms(q, q_positions, kv_positions, inputs_q.shape[-1])
    return self._attend(q, k, kv.v, mask, inputs_q.shape[-1], bias)

  def extend(self, inputs, mask, q_positions, kv_positions, cache: KVCache, cache_index):
    """Self-attention of new tokens inputs [B, L, D] over the S slots of `cache` (KVCache
    [B, S, K, Dh]), their own keys and values written at slots cache_index..cache_index+L-1.

    mask: bool [B, 1|H, L, S]; q_positions [B, L]; kv_positions [B, S], the position of every
    slot's token, the new ones included. Returns (output [B, L, D], the updated cache).
    """
    kv = self.key_values(inputs)
    q = self.queries(inputs)
    k = kv.k
    if self.position == "rope":
      new_positions = jax.lax.dynamic_slice_in_dim(kv_positions, cache_index, k.shape[1], axis=1)
      q = rotary_embedding(q, q_positions, self.rope)
      k = rotary_embedding(k, new_positions, self.rope)
    cache = KVCache(
        k=jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, 1),
        v=jax.lax.dynamic_update_slice_in_dim(cache.v, kv.v.astype(cache.v.dtype), cache_index,
                                              1))
    q, bias = self._position_terms(q, q_positions, kv_positions, inputs.shape[-1])
    return self._attend(q, cache.k, cache.v, mask, inputs.shape[-1], bias), cache

  def attend_to(self, inputs_q, key_values: KVCache, mask):
    """Position-free cross-attention of inputs_q [B, Lq, Dq] over keys and values from
    `key_values` (KVCache [B, Lk, K, Dh]); mask: bool [B, 1|H, Lq, Lk] -> [B, Lq, Dq]."""
    if self.position != "none":
      raise ValueError("Projected keys and values are for position-free cross-attention.")
    q = self.queries(inputs_q)
    return self._attend(q, key_values.k, key_values.v, mask, inputs_q.shape[-1])

  def _project(self, projection, x):
    y = projection(x)
    return y if self.clip_qkv is None else jnp.clip(y, -self.clip_qkv, self.clip_qkv)

  @nn.compact
  def _attend(self, q, k, v, mask, width: int, bias=None):
    """softmax(q k^T / sqrt(Dh) + bias, where mask) v, projected to `width` features.

    The one compact method: the output projection is as wide as the queries' inputs, which
    only a call shows; the other projections are set up.
    """
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if self.attention_kind == "fused":
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    else:
      weights = attention_weights(q, k, mask, bias)
      # For inspection only: kept when "intermediates" is mutable in `apply`, else a no-op.
      self.sow("intermediates", "attention_weights", weights)
      out = attend(weights, v)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return Projection((width,), ("heads", "kv", "embed"), self.out_bias, self.dtype,
                      self.param_dtype, name="out")(out)

  def _position_terms(self, q, q_positions, kv_positions, model_dim):
    """(queries, additive logit bias [B, H, Lq, S] or None) of the relative and ALiBi schemes;
    RoPE has rotated q and k already."""
    if self.position == "relative":
      return self._relative_position_terms(q, q_positions, kv_positions, model_dim)
    if self.position == "alibi":
      return q, alibi_bias(q_positions, kv_positions, self.num_heads, self.alibi_bias_max)
    return q, None

  def _relative_position_terms(self, q, q_positions, kv_positions, model_dim):
    """Transformer-XL: logits = (q + u).k + (q + v).W_r r(i - j), r sinusoidal.

    Returns the content query q + u and the position term as an additive bias [B, H, Lq, S],
    pre-scaled by 1/sqrt(Dh) like the content logits.
    """
    num_keys = kv_positions.shape[1]
    # Distances 0..S-1 cover every pair a causal mask lets through.
    rel = sinusoid(jnp.arange(num_keys), model_dim).astype(self.dtype)
    r = self.relative(rel)  # [S, H, Dh]
    scores = jnp.einsum("bqhd,shd->bhqs", q + self.position_bias.astype(q.dtype), r,
                        preferred_element_type=jnp.float32)
    distance = jnp.clip(q_positions[:, :, None] - kv_positions[:, None, :], 0, num_keys - 1)
    distance = jnp.broadcast_to(distance[:, None], scores.shape[:2] + distance.shape[1:])
    bias = jnp.take_along_axis(scores, distance, axis=-1) / jnp.sqrt(self.head_dim)
    return q + self.content_bias.astype(q.dtype), bias
