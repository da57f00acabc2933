"""The Flamingo model: frozen vision encoder -> Perceiver Resampler -> frozen LM with GATED
XATTN-DENSE blocks inserted before every `xattn.every`-th LM block.

images [B, M, T, H, W, 3] --encoder--> [B, M, T, S, Dv] --resampler--> [B, M, R, D]
tokens [B, L] (with `<image>` and `<EOC>`) --LM + gated xattn--> logits [B, L, V]

Each mode is a method (`model.apply(variables, ..., method=Flamingo.media_kv)`):
  __call__(images, tokens): the full forward pass, as training runs it;
  vision_features(pixels): the frozen vision encoder's features (RICES compares them);
  encode_media(images): the visual tokens; decode(visual, tokens): the full pass from them;
  media_kv(visual): every gated block's keys and values of the media, once per prompt;
  extend(tokens, positions, state): decoding: continues a `FlamingoDecodeState` (started from
    those keys and values by `FlamingoDecodeState.start`) by some tokens.
Media and the `<image>` positions flow through the arguments of every call; nothing is stored in
the modules between calls (unlike OpenFlamingo's "condition the layers first").

`config.remat` rematerialises every gated and LM block; `config.scan_layers` runs the repeating
units of one gated block and `every` LM blocks as one `nn.scan` (see flamingo/scan.py for the
layout and the parameter conversion).
"""

import functools

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.flamingo.gated_xattn import GatedCrossAttentionBlock
from flamingo_jax.flamingo.masking import (attached_media_index, cross_attention_mask,
                                           media_index, next_attended)
from flamingo_jax.flamingo.resampler import PerceiverResampler
from flamingo_jax.flamingo.scan import SCANNED, Layout
from flamingo_jax.layers.attention import KVCache
from flamingo_jax.layers.remat import remat
from flamingo_jax.lm.model import (DecodeState, DecoderBlock, DecoderLM, LMConfig, advance,
                                   attention_mask, cache_positions, default_positions)
from flamingo_jax.vision import make_vision_encoder

NUM_SPECIAL_TOKENS = 2  # <image>, <EOC>


def lm_config(model_config) -> LMConfig:
  """The frozen LM's config, extended by the learned `<image>` and `<EOC>` rows, and by any
  further new rows that `model.lm.num_extra_tokens` asks for (OpenFlamingo's `<PAD>`)."""
  config = LMConfig.from_dict({"num_extra_tokens": NUM_SPECIAL_TOKENS, **model_config.lm,
                               "attention_kind": attention_kind(model_config)})
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


# The xattn section's fields that place the gated blocks and mask what they see; the others are
# the block's own (GatedCrossAttentionBlock's fields).
XATTN_LAYOUT_FIELDS = ("every", "start", "media_mode", "media_reset_token_id")


def gated_block(model_config) -> GatedCrossAttentionBlock:
  """A GATED XATTN-DENSE block of the config, rematerialised as `remat` says."""
  fields = {k: v for k, v in model_config.xattn.items() if k not in XATTN_LAYOUT_FIELDS}
  dtype, param_dtype = dtypes(model_config)
  return remat(GatedCrossAttentionBlock, model_config.remat)(
      **fields, attention_kind=attention_kind(model_config), dtype=dtype,
      param_dtype=param_dtype)


def attention_kind(model_config) -> str:
  """How the LM, the gated blocks and the resampler compute attention (`model.attention_kind`:
  layers.attention.ATTENTION_KINDS; configs saved before the switch materialise it)."""
  return model_config.get("attention_kind", "materialized")


def media_reset_token_id(model_config) -> int:
  """The token after which text sees no image until the next (`masking.media_index`), -1 for
  none, as in configs saved before the switch."""
  return model_config.xattn.get("media_reset_token_id", -1)



def take_rows(indices, axis: int):
  """x -> the rows `indices` of x along `axis`: how a decode state's parts follow its sequences."""
  return lambda x: jnp.take(x, indices, axis=axis)

@flax.struct.dataclass
class MediaKV:
  """The gated blocks' keys and values of a prompt's media (`Flamingo.media_kv`), computed once
  for all decoding steps. blocks: one KVCache [B, M * R, H, Dh] per gated block that runs one by
  one; scanned: one KVCache [U, B, M * R, H, Dh] for the gated blocks of the U scanned units
  (empty without `scan_layers`)."""
  blocks: tuple[KVCache, ...]
  scanned: tuple[KVCache, ...]
  num_media: int = flax.struct.field(pytree_node=False)

  @property
  def batch_size(self) -> int:
    return jax.tree.leaves(self)[0].shape[-4]

  @property
  def num_tokens(self) -> int:
    """M * R, the visual tokens of all media."""
    return jax.tree.leaves(self)[0].shape[-3]

  @property
  def tokens_per_medium(self) -> int:
    """R (0 for a text-only prompt's no media)."""
    return self.num_tokens // max(self.num_media, 1)

  def take(self, indices) -> "MediaKV":
    """The keys and values of the sequences `indices` ([N] int32 into the batch)."""
    rows = functools.partial(take_rows, indices)
    return self.replace(blocks=jax.tree.map(rows(0), self.blocks),
                        scanned=jax.tree.map(rows(1), self.scanned))


@flax.struct.dataclass
class FlamingoDecodeState:
  """What Flamingo's decoding carries from one `Flamingo.extend` call to the next.

  lm: the LM's state, with the caches of the LM blocks that run one by one; scanned: one
  KVCache [U, B, S, K, Dh] per LM block of a scanned unit (empty without `scan_layers`); media:
  the gated blocks' keys and values of the prompt's media; media_count: [B] int32, the number of
  media each sequence has seen; media_attended: [B] int32, the medium its next token attends to
  unless it is an `<image>` (-1: none, before the first or after a reset token).
  """
  lm: DecodeState
  scanned: tuple[KVCache, ...]
  media: MediaKV
  media_count: jax.Array
  media_attended: jax.Array

  @classmethod
  def start(cls, model_config, media: MediaKV, length: int, dtype=jnp.float32):
    """An empty state of `length` cache slots for decoding with `media` (`Flamingo.media_kv`)."""
    layout, lm, batch = Layout.of(model_config), lm_config(model_config), media.batch_size
    cache = KVCache.zeros(batch, length, lm.kv_heads, lm.dh, dtype)
    stacked = jax.tree.map(lambda a: jnp.zeros((layout.num_scanned, *a.shape), a.dtype), cache)
    return cls(lm=DecodeState.zeros(lm, batch, length, dtype, layout.unscanned),
               scanned=(stacked,) * layout.every if layout.num_scanned else (),
               media=media, media_count=jnp.zeros((batch,), jnp.int32),
               media_attended=jnp.full((batch,), -1, jnp.int32))

  def take(self, indices, keep_media: bool = False):
    """The state of the sequences `indices` ([N] int32 into the batch, repeats allowed): how
    beams and candidate answers copy and reorder a prompt's caches.

    keep_media: leave the media's keys and values as they are, for indices that only reorder
    rows with the same media (the beams of one prompt): with many shots they are most of the
    state, and copying them at every step took nearly half of beam search's decoding time.
    """
    rows = functools.partial(take_rows, indices)
    lm = DecodeState(caches=jax.tree.map(rows(0), self.lm.caches),
                     key_positions=rows(0)(self.lm.key_positions), index=self.lm.index)
    return FlamingoDecodeState(lm=lm, scanned=jax.tree.map(rows(1), self.scanned),
                               media=self.media if keep_media else self.media.take(indices),
                               media_count=rows(0)(self.media_count),
                               media_attended=rows(0)(self.media_attended))

  def logical_axes(self):
    """The state's logical axes (flamingo_jax.sharding places it by them as it places the
    parameters), a like tree of PartitionSpecs, told apart by rank: keys and values
    [(layers,) batch, length, heads, kv], key positions [batch, length], media counts and
    attended media [batch], the cache index []."""
    kv = ("batch", "length", "heads", "kv")
    names = {0: (), 1: ("batch",), 2: ("batch", "length"), 4: kv, 5: ("layers", *kv)}
    return jax.tree.map(lambda x: jax.sharding.PartitionSpec(*names[x.ndim]), self)


class FlamingoUnit(nn.Module):
  """One gated block, then `xattn.every` LM blocks: the body of the layer scan, with a method
  for each of Flamingo's modes that runs the layers.

  x: [B, L, D], the scan's carry; the other arguments as in `Flamingo.decode` and
  `Flamingo.extend`, the same for every unit, but for the caches and the media's keys and
  values, which the scan slices unit by unit.
  """
  config: ml_collections.FrozenConfigDict

  def setup(self):
    c = self.config
    self.gated_xattn = gated_block(c)
    block = remat(DecoderBlock, c.remat)
    self.layers = [block(lm_config(c), *dtypes(c)) for _ in range(c.xattn.every)]

  def __call__(self, x, visual, xmask, positions, mask):
    """The full pass: visual [B, N, D]. Returns (x, no per-unit outputs)."""
    x = self.gated_xattn(x, visual, xmask)
    for layer in self.layers:
      x = layer(x, positions, mask)
    return x, ()

  def extend(self, x, caches, media_kv, xmask, q_positions, kv_positions, mask, cache_index):
    """A decoding step: caches, one KVCache [B, S, K, Dh] per LM block; media_kv, this unit's
    gated block's keys and values. Returns (x, the updated caches)."""
    x = self.gated_xattn.attend_to(x, media_kv, xmask)
    new_caches = []
    for layer, cache in zip(self.layers, caches):
      x, cache = layer.extend(x, q_positions, kv_positions, mask, cache, cache_index)
      new_caches.append(cache)
    return x, tuple(new_caches)

  def media_kv(self, visual):
    """visual [B, N, D] -> (visual, the scan's unchanged carry; this unit's gated block's keys
    and values)."""
    return visual, self.gated_xattn.media_kv(visual)


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

  config: the `model` section of a Flamingo config (see flamingo_jax.configs.base).
  """
  config: ml_collections.FrozenConfigDict

  def setup(self):
    c = self.config
    dtype, param_dtype = dtypes(c)
    self.vision_encoder = make_vision_encoder(c.vision, dtype, param_dtype)
    self.resampler = PerceiverResampler(**c.resampler, attention_kind=attention_kind(c),
                                        dtype=dtype, param_dtype=param_dtype)
    # Blocks that the layer scan runs are set up here too, but only those called get parameters.
    self.lm = DecoderLM(lm_config(c), dtype, param_dtype, c.remat)
    self.gated_xattn = [gated_block(c) for _ in xattn_layer_indices(c)]
    layout = Layout.of(c)
    if layout.num_scanned:
      # Each mode scans the units' parameters; what every unit reads alike is broadcast.
      unit = dict(variable_axes={"params": 0}, split_rngs={"params": True},
                  length=layout.num_scanned, metadata_params={nn.PARTITION_NAME: "layers"})
      same = nn.broadcast
      self.scanned = nn.scan(FlamingoUnit, methods={
          "__call__": unit | dict(in_axes=(same,) * 4),  # visual, xmask, positions, mask.
          # The caches and media keys and values by unit; xmask, q / kv positions, mask, index.
          "extend": unit | dict(in_axes=(0, 0, *(same,) * 5)),
          "media_kv": unit | dict(in_axes=()),  # The visual tokens are the carry.
      })(c, name=SCANNED)

  def vision_features(self, pixels):
    """pixels [N, H, W, 3] -> the frozen vision encoder's tokens [N, S, Dv] or grid
    [N, h, w, Dv]."""
    return self.vision_encoder(pixels)

  def encode_media(self, images):
    """images [B, M, T, H, W, 3] -> visual tokens [B, M, R, D]. M may be 0: a text-only
    prompt, which no token's cross-attention sees."""
    chex.assert_rank(images, 6)
    b, m, t, h, w, ch = images.shape
    if m == 0:
      return jnp.zeros((b, 0, self.resampler.num_latents, self.resampler.dim),
                       dtypes(self.config)[0])
    features = self.vision_features(images.reshape(b * m * t, h, w, ch))
    features = features.reshape(b, m, t, -1, features.shape[-1])  # Grids flatten to S = h*w.
    return self.resampler(features)

  def flat_visual(self, visual):
    """[B, M, R, D] -> [B, M * R, D], what the gated blocks attend to."""
    b, m, r, d = visual.shape
    return nn.with_logical_constraint(visual.reshape(b, m * r, d), ("batch", "media", "embed"))

  def decode(self, visual, tokens, positions=None, attach_to_next=False):
    """The full pass of the LM over tokens [B, L] int32 conditioned on visual [B, M, R, D]
    (`encode_media`) -> logits [B, L, V] float32. positions: [B, L] int32, default 0..L-1;
    -1 marks padding. attach_to_next: bool [B] (or one for all): text attends to the image
    after it, not before (`masking.attached_media_index`; the paper's M3W augmentation)."""
    chex.assert_rank(visual, 4)
    chex.assert_rank(tokens, 2)
    c, layout = self.config, Layout.of(self.config)
    num_media, tokens_per_medium = visual.shape[1:3]
    visual = self.flat_visual(visual)
    positions = default_positions(tokens) if positions is None else positions
    index = attached_media_index(tokens, c.media_token_id,
                                 jnp.broadcast_to(attach_to_next, tokens.shape[:1]),
                                 media_reset_token_id(c))
    xmask = cross_attention_mask(index, num_media, tokens_per_medium, c.xattn.media_mode)
    mask = attention_mask(positions, positions, self.lm.config.sliding_window)

    x = self.lm.embed(tokens, positions)
    x = self.lm.blocks(layout.prefix, x, positions, mask)
    if layout.num_scanned:
      x, _ = self.scanned(x, visual, xmask, positions, mask)
    for k in range(layout.num_scanned, len(layout.gated)):
      x = self.gated_xattn[k](x, visual, xmask)
      x = self.lm.blocks(layout.unit(k), x, positions, mask)
    return self.lm.head(x)

  def media_kv(self, visual) -> MediaKV:
    """visual [B, M, R, D] -> every gated block's keys and values of these media."""
    chex.assert_rank(visual, 4)
    layout, flat = Layout.of(self.config), self.flat_visual(visual)
    scanned = (self.scanned.media_kv(flat)[1],) if layout.num_scanned else ()
    blocks = tuple(self.gated_xattn[k].media_kv(flat)
                   for k in range(layout.num_scanned, len(layout.gated)))
    return MediaKV(blocks=blocks, scanned=scanned, num_media=visual.shape[1])

  def extend(self, tokens, positions, state: FlamingoDecodeState, last_only: bool = False):
    """Continues decoding from `state` with tokens, positions [B, L] int32 (-1 marks padding).

    Returns (logits [B, L, V], or [B, 1, V] of the last position when `last_only` (reading a
    prompt: a long one's logits cost as much as a few LM layers); the advanced state).
    """
    chex.assert_rank(tokens, 2)
    c, layout, media = self.config, Layout.of(self.config), state.media
    reset = media_reset_token_id(c)
    index = media_index(tokens, c.media_token_id, reset, state.media_count, state.media_attended)
    xmask = cross_attention_mask(index, media.num_media, media.tokens_per_medium,
                                 c.xattn.media_mode)
    kv_pos, mask = cache_positions(positions, state.lm, self.lm.config.sliding_window)

    x = self.lm.embed(tokens, positions)
    x, caches = self.lm.extend_blocks(layout.prefix, x, positions, kv_pos, mask, state.lm)
    scanned = ()
    if layout.num_scanned:
      (scanned_media,) = media.scanned
      x, scanned = self.scanned.extend(x, state.scanned, scanned_media, xmask, positions, kv_pos,
                                       mask, state.lm.index)
    for k in range(layout.num_scanned, len(layout.gated)):
      x = self.gated_xattn[k].attend_to(x, media.blocks[k - layout.num_scanned], xmask)
      x, unit_caches = self.lm.extend_blocks(layout.unit(k), x, positions, kv_pos, mask,
                                             state.lm)
      caches.update(unit_caches)
    logits = self.lm.head(x[:, -1:] if last_only else x)
    return logits, state.replace(lm=advance(state.lm, caches, kv_pos, tokens.shape[1]),
                                 scanned=scanned,
                                 media_count=state.media_count + jnp.sum(
                                     tokens == c.media_token_id, axis=1, dtype=jnp.int32),
                                 media_attended=next_attended(tokens, index, reset))

  def __call__(self, images, tokens, positions=None, attach_to_next=False):
    """images [B, M, T, H, W, 3] float32, tokens [B, L] int32 -> logits [B, L, V] float32;
    attach_to_next as in `decode`."""
    check_media_count(tokens, images.shape[1], self.config.media_token_id)
    return self.decode(self.encode_media(images), tokens, positions, attach_to_next)
