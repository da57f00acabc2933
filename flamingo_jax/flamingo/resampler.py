"""Perceiver Resampler (paper appendix A.1.1): a fixed number of learned latents attend to the
flattened space-time features of each medium, whatever its resolution or frame count.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.layers.attention import MultiHeadAttention
from flamingo_jax.layers.mlp import Mlp, dense
from flamingo_jax.layers.norms import make_norm


class FeedForward(nn.Module):
  """A norm ("layer" or "rms") then an MLP of round(ratio * D) hidden units, gated (SwiGLU, as
  IDEFICS's gated blocks) or not: [..., D] -> [..., D]."""
  ratio: float
  activation: str
  norm_eps: float
  norm_type: str = "layer"
  gated: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = make_norm(self.norm_type, eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="norm")(x)
    return Mlp(round(self.ratio * x.shape[-1]), self.activation, self.gated, dtype=self.dtype,
               param_dtype=self.param_dtype, name="mlp")(x)


class PerceiverLayer(nn.Module):
  """x = x + Attn(q=x, kv=concat([x_f, x])); x = x + FFW(x).

  latents: [N, R, D]; features: [N, S, D] -> [N, R, D]. qk_norm: a LayerNorm of each head's
  queries and keys (IDEFICS's `qk_layer_norms_perceiver`), or "none".
  """
  num_heads: int
  head_dim: int
  mlp_ratio: float
  activation: str
  norm_eps: float
  qk_norm: str = "none"
  attention_kind: str = "materialized"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, latents, features):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    features = make_norm("layer", eps=self.norm_eps, name="features_norm", **kw)(features)
    queries = make_norm("layer", eps=self.norm_eps, name="latents_norm", **kw)(latents)
    kv = jnp.concatenate([features, queries], axis=1)
    mask = jnp.ones((1, 1, queries.shape[1], kv.shape[1]), bool)
    attended = MultiHeadAttention(
        self.num_heads, self.head_dim, qk_norm=self.qk_norm, qk_norm_eps=self.norm_eps,
        attention_kind=self.attention_kind, name="attention", **kw)(queries, kv, mask)
    latents = latents + attended
    return latents + FeedForward(self.mlp_ratio, self.activation, self.norm_eps, name="ffw",
                                 **kw)(latents)


def interpolate_time(embedding: jax.Array, num_frames: int) -> jax.Array:
  """Temporal embeddings [T_train, D] for `num_frames` frames.

  Fewer frames than trained take the first ones (same frame rate); more frames stretch the
  trained embeddings linearly over the same time span, as the paper does to run 30 frames at 3
  FPS with embeddings trained on 8 frames at 1 FPS.
  """
  trained = embedding.shape[0]
  if num_frames <= trained:
    return embedding[:num_frames]
  return jax.image.resize(embedding, (num_frames, embedding.shape[1]), method="linear")


class PerceiverResampler(nn.Module):
  """features [B, M, T, S, Dv] -> visual tokens [B, M, R, D].

  When Dv != D, a linear projection maps the features to the resampler's width first (the
  paper's NFNet-F6 gives 3072 channels to a 1536-wide resampler). Only temporal position
  embeddings are learned; there are no spatial ones (paper A.1.1). `temporal_embedding=False`
  leaves those out too, as OpenFlamingo's resampler does. The fields come from the config's
  `resampler` section (flamingo_jax.configs.base); `temporal_embedding` and `qk_norm` keep
  defaults, the paper's, since only imported models' configs name them (saved configs without
  them still load).
  """
  dim: int
  depth: int
  num_latents: int
  num_heads: int
  head_dim: int
  mlp_ratio: float
  activation: str
  max_frames: int
  norm_eps: float
  temporal_embedding: bool = True
  qk_norm: str = "none"
  attention_kind: str = "materialized"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    chex.assert_rank(features, 5)
    b, m, t, s, dv = features.shape
    if dv != self.dim:
      features = dense(self.dim, ("mlp", "embed"), use_bias=False, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="input_projection")(features)
    init = nn.initializers.normal(0.02)
    if self.temporal_embedding:
      time = self.param("temporal_embedding",
                        nn.with_logical_partitioning(init, ("frames", "embed")),
                        (self.max_frames, self.dim), self.param_dtype)
      features = features + interpolate_time(jnp.asarray(time, self.dtype), t)[:, None, :]
    features = features.reshape(b * m, t * s, self.dim)
    latents = self.param("latents", nn.with_logical_partitioning(init, ("latents", "embed")),
                         (self.num_latents, self.dim), self.param_dtype)
    x = jnp.broadcast_to(jnp.asarray(latents, self.dtype), (b * m, self.num_latents, self.dim))
    for i in range(self.depth):
      layer = PerceiverLayer(self.num_heads, self.head_dim, self.mlp_ratio, self.activation,
                             self.norm_eps, self.qk_norm, self.attention_kind, self.dtype,
                             self.param_dtype, name=f"layers_{i}")
      x = layer(x, features)
    x = make_norm("layer", eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="final_norm")(x)
    return x.reshape(b, m, self.num_latents, self.dim)
