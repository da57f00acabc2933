"""Greedy decoding with a KV cache, compiled as one prefill and one scan over new tokens."""

import functools

import jax
import jax.numpy as jnp

from flamingo_jax.flamingo.model import Flamingo, FlamingoDecodeState


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: Flamingo, params, images, tokens, max_new_tokens: int,
                    stop_token: int | None = None):
  """images [B, M, T, H, W, 3]; prompt tokens [B, L] -> new tokens [B, max_new_tokens].

  After a sequence emits `stop_token` (e.g. `<EOC>`) it keeps emitting it.
  """
  variables = {"params": params}
  batch, length = tokens.shape
  visual = model.apply(variables, images, method=Flamingo.encode_media)
  state = FlamingoDecodeState.zeros(model.config, batch, length + max_new_tokens - 1,
                                    jnp.dtype(model.config.dtype))
  logits, state = model.apply(variables, visual, tokens, None, state, method=Flamingo.decode)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  def step(carry, position):
    token, state, done = carry
    logits, state = model.apply(variables, visual, token[:, None],
                                jnp.full((batch, 1), position, jnp.int32), state,
                                method=Flamingo.decode)
    next_token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    if stop_token is not None:
      done = done | (token == stop_token)
      next_token = jnp.where(done, stop_token, next_token)
    return (next_token, state, done), next_token

  positions = jnp.arange(length, length + max_new_tokens - 1, dtype=jnp.int32)
  _, rest = jax.lax.scan(step, (first, state, jnp.zeros((batch,), bool)), positions)
  return jnp.concatenate([first[:, None], rest.T], axis=1)
