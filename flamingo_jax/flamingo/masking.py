"""Image-causal cross-attention masking (paper section 2.3), computed from `<image>` positions.

A text token attends only to the visual tokens of the last image whose `<image>` token is at or
before it; tokens before the first image attend to nothing. Earlier images still reach later
tokens through the LM's own self-attention.

In training on web pages the paper also lets text attend to the image right after it instead
(appendix A.3.3: the most relevant image is taken to be the one before or the one after,
chosen at random per sequence). That changes only the function phi from text positions to
images, never the text: `attached_media_index`.
"""

import jax
import jax.numpy as jnp

MEDIA_MODES = ("last", "all_previous")


def media_index(tokens: jax.Array, media_token_id: int, reset_token_id: int = -1,
                seen=0, attended=-1) -> jax.Array:
  """Index of the medium each token attends to: the most recent at or before it, -1 before the
  first, and -1 after a `reset_token_id` until the next medium (IDEFICS: text after an EOS in
  a packed sequence sees no image; the EOS itself still does; -1 never matches a token).

  tokens: [B, L] int32. A decoding step continues earlier calls: seen, [B] int32, the media
  they held; attended, [B] int32, the medium their next token attends to (`next_attended`).
  Returns [B, L] int32.
  """
  is_media, is_reset = tokens == media_token_id, tokens == reset_token_id
  positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)
  last_media = jax.lax.cummax(jnp.where(is_media, positions, -1), axis=1)
  # The last reset strictly before each token.
  last_reset = jax.lax.cummax(jnp.where(is_reset, positions, -1), axis=1)
  last_reset = jnp.pad(last_reset[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  counted = jnp.asarray(seen, jnp.int32)[..., None] + jnp.cumsum(is_media, 1, dtype=jnp.int32) - 1
  carried = jnp.broadcast_to(jnp.asarray(attended, jnp.int32)[..., None], tokens.shape)
  return jnp.where(last_media > last_reset, counted,
                   jnp.where(last_reset >= 0, -1, carried))


def next_attended(tokens: jax.Array, index: jax.Array, reset_token_id: int = -1) -> jax.Array:
  """The medium a token after `tokens` [B, L] attends to if it is no `<image>`: its
  predecessor's (`index` [B, L], from media_index), or none after a reset token. [B]."""
  return jnp.where(tokens[:, -1] == reset_token_id, -1, index[:, -1])


def attached_media_index(tokens: jax.Array, media_token_id: int, attach_to_next: jax.Array,
                         reset_token_id: int = -1):
  """Index of the medium each token attends to, -1 for none: per sequence, the previous medium
  (`media_index`, resets included) or, where attach_to_next, the next one, the first whose
  `<image>` is at or after the token. The edges mirror each other: text before the first image
  has no previous image, text after the last has no next one, and neither attends to any.

  tokens: [B, L] int32; attach_to_next: [B] bool. Returns [B, L] int32.
  """
  count = jnp.cumsum(tokens == media_token_id, axis=1, dtype=jnp.int32) - 1
  # The media strictly before a token number the one at or after it.
  following = count + 1 - (tokens == media_token_id)
  following = jnp.where(following <= count[:, -1:], following, -1)
  return jnp.where(attach_to_next[:, None], following,
                   media_index(tokens, media_token_id, reset_token_id))


def cross_attention_mask(index: jax.Array, num_media: int, tokens_per_medium: int,
                         mode: str = "last") -> jax.Array:
  """Which visual tokens each text token may attend to.

  index: [B, L] from `media_index`. Visual tokens are media-major: [M * R].
  mode "last" is the paper's; "all_previous" is its ablation (every image so far).
  Returns bool [B, 1, L, M * R].
  """
  medium = jnp.repeat(jnp.arange(num_media, dtype=jnp.int32), tokens_per_medium)
  if mode == "last":
    mask = medium[None, None, :] == index[:, :, None]
  elif mode == "all_previous":
    mask = medium[None, None, :] <= index[:, :, None]
  else:
    raise ValueError(f"Unknown cross-attention media mode {mode!r}; choose from {MEDIA_MODES}.")
  return mask[:, None]
