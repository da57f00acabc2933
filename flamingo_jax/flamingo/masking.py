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


def media_index(tokens: jax.Array, media_token_id: int, offset: jax.Array | None = None):
  """Index of the most recent medium at or before each token, -1 before the first.

  tokens: [B, L] int32; offset: [B] int32, media already seen in earlier decoding calls.
  Returns [B, L] int32.
  """
  index = jnp.cumsum(tokens == media_token_id, axis=1, dtype=jnp.int32) - 1
  return index if offset is None else index + offset[:, None]


def attached_media_index(tokens: jax.Array, media_token_id: int, attach_to_next: jax.Array):
  """Index of the medium each token attends to, -1 for none: per sequence, the previous medium
  (`media_index`) or, where attach_to_next, the next one, the first whose `<image>` is at or
  after the token. The edges mirror each other: text before the first image has no previous
  image, text after the last has no next one, and neither attends to any.

  tokens: [B, L] int32; attach_to_next: [B] bool. Returns [B, L] int32.
  """
  previous = media_index(tokens, media_token_id)
  # The media strictly before a token number the one at or after it.
  following = previous + 1 - (tokens == media_token_id)
  following = jnp.where(following <= previous[:, -1:], following, -1)
  return jnp.where(attach_to_next[:, None], following, previous)


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
