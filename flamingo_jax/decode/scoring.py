"""Close-ended scoring: the log-likelihood of each candidate answer given a prompt, for
classification (ImageNet class names, HatefulMemes yes / no). The prompt is read once; all
candidates then run through copies of its cache in one call."""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.decode.generate import extend, prefill


def right_pad(candidates: Sequence[Sequence[int]], pad_id: int = 0):
  """Candidate token lists -> (tokens [C, Lc] int32, mask [C, Lc] bool)."""
  length = max(len(c) for c in candidates)
  tokens = np.full((len(candidates), length), pad_id, np.int32)
  mask = np.zeros((len(candidates), length), bool)
  for row, candidate in enumerate(candidates):
    tokens[row, :len(candidate)] = candidate
    mask[row, :len(candidate)] = True
  return tokens, mask


@functools.partial(jax.jit, static_argnames="model")
def candidate_log_likelihoods(model, params, visual, tokens, candidates, mask, positions=None):
  """log p(candidate | prompt), summed over the candidate's tokens.

  visual [B, M, R, D] (`generate.encode`); prompts tokens [B, L] (left-padded with
  `positions`, see flamingo_jax.decode.generate); candidates [C, Lc] with mask [C, Lc]
  (`right_pad`), the same candidates for every prompt. Returns [B, C] float32.
  """
  num, length = candidates.shape
  last_logits, state, next_positions = prefill(model, params, visual, tokens, positions, length)
  batch = tokens.shape[0]
  rows = jnp.repeat(jnp.arange(batch), num)  # Prompt-major: row b * C + c.
  flat = jnp.tile(candidates, (batch, 1))
  flat_mask = jnp.tile(mask, (batch, 1))
  # Padding after a candidate's end gets position -1: nothing attends to it.
  positions = jnp.where(flat_mask, next_positions[rows, None] + jnp.arange(length), -1)
  logits, _ = extend(model, params, flat, positions, state.take(rows))
  # Token j of a candidate is predicted by the logits before it: the prompt's last for j = 0.
  logits = jnp.concatenate([last_logits[rows, None], logits[:, :-1]], axis=1)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                                  flat[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(flat_mask, log_probs, 0.0), axis=1).reshape(batch, num)
