"""The Flamingo model: frozen vision encoder -> Perceiver Resampler -> frozen LM with GATED
XATTN-DENSE blocks inserted before every `xattn.every`-th LM block.

images [B, M, T, H, W, 3] --encoder--> [B, M, T, S, Dv] --resampler--> [B, M, R, D]
tokens [B, L] (with `<image>` and `<EOC>`) --LM + gated xattn--> logits [B, L, V]

Media and the `<image>` positions flow through the arguments of every call; nothing is stored in
the modules between calls (unlike OpenFlamingo's "condition the layers first").
"""

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.flamingo.gated_xattn import GatedCrossAttentionBlock
from flamingo_jax.flamingo.masking import cross_attention_mask, media_index
from flamingo_jax.flamingo.resampler import PerceiverResampler
from flamingo_jax.lm.model import (DecodeState, DecoderLM, LMConfig, advance,
                                   attention_positions, default_positions, layer_cache)
from flamingo_jax.vision import make_vision_encoder

NUM_SPECIAL_TOKENS = 2  # <image>, <EOC>


def lm_config(model_config) -> LMConfig:
  """The frozen LM's config, extended by the learned `<image>` and `<EOC>` rows."""
  return LMConfig.from_dict({**model_config.lm, "num_extra_tokens": NUM_SPECIAL_TOKENS})


def xattn_layer_indices(model_config) -> tuple[int, ...]:
  """LM blocks preceded by a gated cross-attention block.

  The paper inserts them starting from the first block (`start=0`); OpenFlamingo places one
  before blocks every-1, 2*every-1, ... (`start=every-1`).
  """
  x = model_config.xattn
  return tuple(range(x.start, model_config.lm.num_layers, x.every))


@flax.struct.dataclass
class FlamingoDecodeState:
  """The LM's decode state plus the number of media each sequence has seen ([B] int32)."""
  lm: DecodeState
  media_count: jax.Array

  @classmethod
  def zeros(cls, model_config, batch: int, length: int, dtype=jnp.float32):
    return cls(lm=DecodeState.zeros(lm_config(model_config), batch, length, dtype),
               media_count=jnp.zeros((batch,), jnp.int32))


def check_media_count(tokens, num_media: int, media_token_id: int) -> None:
  """Raises if a sequence has more `<image>` tokens than media were given (concrete inputs only).

  Inside jit the values are unknown; there a token whose image is missing attends to nothing.
  """
  if isinstance(tokens, jax.core.Tracer):
    return
  counts = (np.asarray(tokens) == media_token_id).sum(axis=1)
  if counts.max(initial=0) > num_media:
    row = int(counts.argmax())
    raise ValueError(f"Sequence {row} has {int(counts[row])} <image> tokens (id {media_token_id}) "
                     f"but only {num_media} media per sequence were given.")


class Flamingo(nn.Module):
  """`model.apply({"params": params}, images, tokens)` -> logits [B, L, V] float32.

  config: the `model` section of a Flamingo config (see flamingo_jax.config).
  """
  config: ml_collections.FrozenConfigDict

  def setup(self):
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.vision_encoder = make_vision_encoder(c.vision, dtype, param_dtype)
    self.resampler = PerceiverResampler(**c.resampler, dtype=dtype, param_dtype=param_dtype)
    self.lm = DecoderLM(lm_config(c), dtype, param_dtype)
    x = c.xattn
    self.gated_xattn = [
        GatedCrossAttentionBlock(
            num_heads=x.num_heads, head_dim=x.head_dim,
            mlp_ratio=x.mlp_ratio, activation=x.activation, kv_norm=x.kv_norm,
            norm_eps=x.norm_eps, dtype=dtype, param_dtype=param_dtype)
        for _ in xattn_layer_indices(c)]

  def encode_media(self, images):
    """images [B, M, T, H, W, 3] -> visual tokens [B, M, R, D]."""
    chex.assert_rank(images, 6)
    b, m, t, h, w, ch = images.shape
    features = self.vision_encoder(images.reshape(b * m * t, h, w, ch))
    features = features.reshape(b, m, t, -1, features.shape[-1])  # Grids flatten to S = h*w.
    return self.resampler(features)

  def decode(self, visual, tokens, positions=None, state: FlamingoDecodeState | None = None):
    """Runs the LM over `tokens` conditioned on encoded media.

    visual: [B, M, R, D] from `encode_media`; tokens, positions: [B, L] int32 (positions default
    to 0..L-1; -1 marks padding). With a state, continues from it and returns
    (logits, new state); otherwise returns logits [B, L, V].
    """
    chex.assert_rank([visual, tokens], [4, 2])
    c = self.config
    b, m, r, d = visual.shape
    positions = default_positions(tokens) if positions is None else positions
    index = media_index(tokens, c.media_token_id, None if state is None else state.media_count)
    xmask = cross_attention_mask(index, m, r, c.xattn.media_mode)
    visual = nn.with_logical_constraint(visual.reshape(b, m * r, d), ("batch", "media", "embed"))
    lm_state = None if state is None else state.lm
    q_pos, kv_pos, mask = attention_positions(positions, lm_state)

    x = self.lm.embed(tokens, positions)
    gated = dict(zip(xattn_layer_indices(c), self.gated_xattn))
    caches = []
    for i in range(c.lm.num_layers):
      if i in gated:
        x = gated[i](x, visual, xmask)
      x, cache = self.lm.block(i, x, q_pos, kv_pos, mask, *layer_cache(lm_state, i))
      caches.append(cache)
    logits = self.lm.head(x)
    if state is None:
      return logits
    return logits, FlamingoDecodeState(lm=advance(lm_state, caches, kv_pos, tokens.shape[1]),
                                       media_count=index[:, -1] + 1)

  def __call__(self, images, tokens, positions=None):
    """images [B, M, T, H, W, 3] float32, tokens [B, L] int32 -> logits [B, L, V] float32."""
    check_media_count(tokens, images.shape[1], self.config.media_token_id)
    return self.decode(self.encode_media(images), tokens, positions)
