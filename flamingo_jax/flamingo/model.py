"""The Flamingo model: frozen vision encoder -> Perceiver Resampler -> frozen LM with GATED
XATTN-DENSE blocks inserted before every `xattn.every`-th LM block.

images [B, M, T, H, W, 3] --encoder--> [B, M, T, S, Dv] --resampler--> [B, M, R, D]
tokens [B, L] (with `<image>` and `<EOC>`) --LM + gated xattn--> logits [B, L, V]

Media and the `<image>` positions flow through the arguments of every call; nothing is stored in
the modules between calls (unlike OpenFlamingo's "condition the layers first").

`config.remat` rematerialises every gated and LM block; `config.scan_layers` runs the repeating
units of one gated block and `every` LM blocks as one `nn.scan` (see flamingo/scan.py for the
layout and the parameter conversion).
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
from flamingo_jax.flamingo.scan import SCANNED, Layout
from flamingo_jax.layers.attention import KVCache
from flamingo_jax.layers.remat import remat
from flamingo_jax.lm.model import (DecodeState, DecoderBlock, DecoderLM, LMConfig, advance,
                                   attention_positions, default_positions)
from flamingo_jax.vision import make_vision_encoder

NUM_SPECIAL_TOKENS = 2  # <image>, <EOC>


def lm_config(model_config) -> LMConfig:
  """The frozen LM's config, extended by the learned `<image>` and `<EOC>` rows, and by any
  further new rows that `model.lm.num_extra_tokens` asks for (OpenFlamingo's `<PAD>`)."""
  config = LMConfig.from_dict({"num_extra_tokens": NUM_SPECIAL_TOKENS, **model_config.lm})
  if config.num_extra_tokens < NUM_SPECIAL_TOKENS:
    raise ValueError(f"model.lm.num_extra_tokens is {config.num_extra_tokens}, but <image> and "
                     f"<EOC> need {NUM_SPECIAL_TOKENS} new rows.")
  return config


def xattn_layer_indices(model_config) -> tuple[int, ...]:
  """LM blocks preceded by a gated cross-attention block.

  The paper inserts them starting from the first block (`start=0`); OpenFlamingo places one
  before blocks every-1, 2*every-1, ... (`start=every-1`).
  """
  return tuple(Layout.of(model_config).gated)


def dtypes(model_config) -> tuple[jnp.dtype, jnp.dtype]:
  """(activation dtype, parameter dtype)."""
  return jnp.dtype(model_config.dtype), jnp.dtype(model_config.param_dtype)


def gated_block(model_config, name: str | None = None) -> GatedCrossAttentionBlock:
  """A GATED XATTN-DENSE block of the config, rematerialised as `remat` says."""
  x = model_config.xattn
  dtype, param_dtype = dtypes(model_config)
  return remat(GatedCrossAttentionBlock, model_config.remat)(
      num_heads=x.num_heads, head_dim=x.head_dim, mlp_ratio=x.mlp_ratio, activation=x.activation,
      kv_norm=x.kv_norm, norm_eps=x.norm_eps, dtype=dtype, param_dtype=param_dtype, name=name)


@flax.struct.dataclass
class MediaKV:
  """The gated blocks' keys and values of a prompt's media, computed once for all decoding
  steps (`Flamingo.media_kv`). blocks: one KVCache [B, M * R, H, Dh] per gated block that runs
  one by one; scanned: one KVCache [U, B, M * R, H, Dh] for the scanned units, or None."""
  blocks: tuple[KVCache, ...]
  scanned: KVCache | None
  num_media: int = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class FlamingoDecodeState:
  """What Flamingo's decoding carries between calls.

  lm: the LM's state, with the caches of the LM blocks that run one by one; scanned: one
  KVCache [U, B, S, K, Dh] per LM block of a scanned unit (empty without `scan_layers`);
  media_count: [B] int32, the number of media each sequence has seen; media: the media's
  keys and values (`Flamingo.start_decoding`), or None to compute them from the visual tokens
  at every call.
  """
  lm: DecodeState
  scanned: tuple[KVCache, ...]
  media_count: jax.Array
  media: MediaKV | None = None

  @classmethod
  def zeros(cls, model_config, batch: int, length: int, dtype=jnp.float32):
    layout, lm = Layout.of(model_config), lm_config(model_config)
    cache = KVCache.zeros(batch, length, lm.kv_heads, lm.dh, dtype)
    stacked = jax.tree.map(lambda a: jnp.zeros((layout.num_scanned, *a.shape), a.dtype), cache)
    return cls(lm=DecodeState.zeros(lm, batch, length, dtype, layout.unscanned),
               scanned=(stacked,) * layout.every if layout.num_scanned else (),
               media_count=jnp.zeros((batch,), jnp.int32))

  def take(self, indices, keep_media: bool = False):
    """The state of the sequences `indices` ([N] int32 into the batch, repeats allowed): how
    beams and candidate answers copy and reorder a prompt's caches.

    keep_media: leave the media's keys and values as they are, for indices that only reorder
    rows with the same media (the beams of one prompt): with many shots they are most of the
    state, and copying them at every step took nearly half of beam search's decoding time.
    """
    rows = lambda axis: lambda x: jnp.take(x, indices, axis=axis)
    lm = DecodeState(caches=jax.tree.map(rows(0), self.lm.caches),
                     key_positions=rows(0)(self.lm.key_positions), index=self.lm.index)
    media = self.media if self.media is None or keep_media else MediaKV(
        blocks=jax.tree.map(rows(0), self.media.blocks),
        scanned=jax.tree.map(rows(1), self.media.scanned), num_media=self.media.num_media)
    return FlamingoDecodeState(lm=lm, scanned=jax.tree.map(rows(1), self.scanned),
                               media_count=rows(0)(self.media_count), media=media)


class FlamingoUnit(nn.Module):
  """One gated block, then `xattn.every` LM blocks: the body of the layer scan.

  x: [B, L, D], the scan's carry; caches: one KVCache [B, S, K, Dh] per LM block, or None;
  media_kv: this unit's gated block's keys and values of the media, or None to compute them
  from visual [B, N, D]; the rest as in `Flamingo.decode`, the same for every unit. Returns
  (x, the advanced caches). With x None, returns (None, the media's keys and values).
  """
  config: ml_collections.FrozenConfigDict

  @nn.compact
  def __call__(self, x, caches, media_kv, visual, xmask, q_positions, kv_positions, mask,
               cache_index):
    c = self.config
    block = remat(DecoderBlock, c.remat)
    gated = gated_block(c, name="gated_xattn")
    if x is None:
      return None, gated(None, visual, None)
    x = gated(x, visual if media_kv is None else media_kv, xmask)
    new_caches = []
    for j in range(c.xattn.every):
      x, cache = block(lm_config(c), *dtypes(c), name=f"layers_{j}")(
          x, q_positions, kv_positions, mask, None if caches is None else caches[j], cache_index)
      new_caches.append(cache)
    return x, tuple(new_caches)


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
    dtype, param_dtype = dtypes(c)
    self.vision_encoder = make_vision_encoder(c.vision, dtype, param_dtype)
    self.resampler = PerceiverResampler(**c.resampler, dtype=dtype, param_dtype=param_dtype)
    # Blocks that the layer scan runs are set up here too, but only those called get parameters.
    self.lm = DecoderLM(lm_config(c), dtype, param_dtype, c.remat)
    self.gated_xattn = [gated_block(c) for _ in xattn_layer_indices(c)]
    layout = Layout.of(c)
    if layout.num_scanned:
      broadcast = (nn.broadcast,) * 6  # visual, xmask, q / kv positions, mask, cache index.
      self.scanned = nn.scan(
          FlamingoUnit, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, 0, *broadcast), length=layout.num_scanned,
          metadata_params={nn.PARTITION_NAME: "layers"})(c, name=SCANNED)

  def encode_media(self, images):
    """images [B, M, T, H, W, 3] -> visual tokens [B, M, R, D]."""
    chex.assert_rank(images, 6)
    b, m, t, h, w, ch = images.shape
    features = self.vision_encoder(images.reshape(b * m * t, h, w, ch))
    features = features.reshape(b, m, t, -1, features.shape[-1])  # Grids flatten to S = h*w.
    return self.resampler(features)

  def flat_visual(self, visual):
    """[B, M, R, D] -> [B, M * R, D], the keys and values of the gated blocks."""
    b, m, r, d = visual.shape
    return nn.with_logical_constraint(visual.reshape(b, m * r, d), ("batch", "media", "embed"))

  def media_kv(self, visual) -> MediaKV:
    """visual [B, M, R, D] -> every gated block's keys and values of these media."""
    chex.assert_rank(visual, 4)
    layout, flat = Layout.of(self.config), self.flat_visual(visual)
    scanned = None
    if layout.num_scanned:
      _, scanned = self.scanned(None, None, None, flat, None, None, None, None, None)
    blocks = tuple(self.gated_xattn[k](None, flat, None)
                   for k in range(layout.num_scanned, len(layout.gated)))
    return MediaKV(blocks=blocks, scanned=scanned, num_media=visual.shape[1])

  def start_decoding(self, visual, length: int, dtype=jnp.float32) -> FlamingoDecodeState:
    """An empty decode state of `length` cache slots holding the media's keys and values, so
    that no decoding call projects the visual tokens again. visual [B, M, R, D]."""
    state = FlamingoDecodeState.zeros(self.config, visual.shape[0], length, dtype)
    return state.replace(media=self.media_kv(visual))

  def decode(self, visual, tokens, positions=None, state: FlamingoDecodeState | None = None,
             last_only: bool = False):
    """Runs the LM over `tokens` conditioned on encoded media.

    visual: [B, M, R, D] from `encode_media` (None when the state holds the media's keys and
    values, see `start_decoding`); tokens, positions: [B, L] int32 (positions default to
    0..L-1; -1 marks padding). With a state, continues from it and returns (logits, new
    state); otherwise returns logits [B, L, V], or [B, 1, V] of the last position when
    `last_only` (reading a prompt: a long one's logits cost as much as a few LM layers).
    """
    chex.assert_rank(tokens, 2)
    c = self.config
    media = None if state is None else state.media
    if media is None:
      chex.assert_rank(visual, 4)
      num_media, visual = visual.shape[1], self.flat_visual(visual)
      num_visual_tokens = visual.shape[1]
    else:
      num_media = media.num_media
      num_visual_tokens = jax.tree.leaves(media)[0].shape[-3]  # KVCache [..., M * R, H, Dh].
    positions = default_positions(tokens) if positions is None else positions
    index = media_index(tokens, c.media_token_id, None if state is None else state.media_count)
    xmask = cross_attention_mask(index, num_media, num_visual_tokens // num_media,
                                 c.xattn.media_mode)
    lm_state = None if state is None else state.lm
    q_pos, kv_pos, mask = attention_positions(positions, lm_state)
    layout = Layout.of(c)

    x = self.lm.embed(tokens, positions)
    x, caches = self.lm.blocks(layout.prefix, x, q_pos, kv_pos, mask, lm_state)
    scanned = ()
    if layout.num_scanned:
      x, scanned = self.scanned(x, None if state is None else state.scanned,
                                None if media is None else media.scanned, visual, xmask,
                                q_pos, kv_pos, mask, None if state is None else lm_state.index)
    for k in range(layout.num_scanned, len(layout.gated)):
      block_media = visual if media is None else media.blocks[k - layout.num_scanned]
      x = self.gated_xattn[k](x, block_media, xmask)
      x, unit_caches = self.lm.blocks(layout.unit(k), x, q_pos, kv_pos, mask, lm_state)
      caches.update(unit_caches)
    logits = self.lm.head(x[:, -1:] if last_only else x)
    if state is None:
      return logits
    return logits, FlamingoDecodeState(lm=advance(lm_state, caches, kv_pos, tokens.shape[1]),
                                       scanned=scanned, media_count=index[:, -1] + 1,
                                       media=media)

  def __call__(self, images, tokens, positions=None):
    """images [B, M, T, H, W, 3] float32, tokens [B, L] int32 -> logits [B, L, V] float32."""
    check_media_count(tokens, images.shape[1], self.config.media_token_id)
    return self.decode(self.encode_media(images), tokens, positions)
