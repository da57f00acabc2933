"""Beam search with a key/value cache, compiled as one prefill and one scan over new tokens.

Each prompt keeps `beam_size` live hypotheses and `beam_size` finished ones. A step extends
every live hypothesis by every token and keeps the 2K best candidates: those that end in the
stop token (`<EOC>`) compete for the finished pool under the length penalty, the K best of the
others stay live (at most K candidates end in the stop token, so K always remain). At the end
the live hypotheses join the finished pool. Scores are Hugging Face's: the sum of token log
probabilities divided by (number of tokens) ** length_penalty.

`banned` token sequences are never completed, as transformers' `bad_words_ids` (its
NoBadWordsLogitsProcessor) rules: a sequence's last token gets no probability where the tokens
before it (the prompt's, then the hypothesis's) end with the rest of it.
"""

import functools

import jax
import jax.numpy as jnp

from flamingo_jax.decode.generate import extend, prefill


def normalised(log_prob, length, length_penalty: float):
  return log_prob / jnp.asarray(length, jnp.float32) ** length_penalty


def ban(log_probs, history, banned: tuple[tuple[int, ...], ...]):
  """log_probs [N, V] with each banned sequence's last token at -inf in the rows whose
  history [N, H] (the latest tokens, H >= the longest sequence's length - 1) ends with the
  sequence's other tokens."""
  for sequence in banned:
    *prefix, last = sequence
    matches = jnp.all(history[:, history.shape[1] - len(prefix):] == jnp.asarray(
        prefix, history.dtype), axis=1) if prefix else jnp.ones(history.shape[:1], bool)
    log_probs = log_probs.at[:, last].set(jnp.where(matches, -jnp.inf, log_probs[:, last]))
  return log_probs


def best(scores, *arrays, k: int):
  """The k best of `scores` [B, N] and the matching rows of each array [B, N, ...]."""
  top, index = jax.lax.top_k(scores, k)
  return top, *(jnp.take_along_axis(a, index.reshape(index.shape + (1,) * (a.ndim - 2)), axis=1)
                for a in arrays)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_size",
                                             "length_penalty", "stop_token", "banned"))
def beam_search(model, params, visual, tokens, max_new_tokens: int, *, beam_size: int,
                length_penalty: float = 1.0, stop_token: int | None = None, positions=None,
                banned: tuple[tuple[int, ...], ...] = ()):
  """visual [B, M, R, D] (`generate.encode`); prompts tokens [B, L] (left-padded with
  `positions`, see flamingo_jax.decode.generate) -> (sequences [B, K, max_new_tokens] int32,
  scores [B, K]), best first. A finished sequence is filled with the stop token after it ends;
  no sequence completes one of `banned` (module docstring).
  """
  logits, state, next_positions = prefill(model, params, visual, tokens, positions,
                                          max_new_tokens - 1)
  return beam_search_from_prefill(model, params, tokens, logits, state, next_positions,
                                  max_new_tokens, beam_size=beam_size,
                                  length_penalty=length_penalty, stop_token=stop_token,
                                  banned=banned)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_size",
                                             "length_penalty", "stop_token", "banned"))
def beam_search_from_prefill(model, params, tokens, logits, state, next_positions,
                             max_new_tokens: int, *, beam_size: int,
                             length_penalty: float = 1.0, stop_token: int | None = None,
                             banned: tuple[tuple[int, ...], ...] = ()):
  """`beam_search` after `generate.prefill(..., room=max_new_tokens - 1)` of the prompts
  tokens [B, L]: from its logits [B, V], decode state and next positions [B], the sequences and
  scores; the first token's choice, then a cached step a token."""
  k = beam_size
  batch, vocab = logits.shape
  # Every beam starts from its prompt's caches; the flat batch is prompt-major: row b * K + j.
  rows = jnp.repeat(jnp.arange(batch), k)
  state, logits, next_positions = state.take(rows), logits[rows], next_positions[rows]
  fill = 0 if stop_token is None else stop_token
  live_seqs = jnp.full((batch, k, max_new_tokens), fill, jnp.int32)
  # Only beam 0 is live at first, so the first step does not pick the same token K times.
  live_scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(batch, axis=0)
  done_seqs = live_seqs
  done_scores = jnp.full((batch, k), -jnp.inf)
  # The prompt's last tokens, before each beam's own: what a banned sequence's start matches.
  reach = max((len(b) - 1 for b in banned), default=0)
  prompt_tail = jnp.broadcast_to(tokens[:, None, tokens.shape[1] - reach:], (batch, k, reach))

  def select(t, logits, live_seqs, live_scores, done_seqs, done_scores):
    """Step t's choice from logits [B * K, V]: the new live and finished hypotheses, and the
    flat rows the live ones continue."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    if banned:
      history = jax.lax.dynamic_slice_in_dim(
          jnp.concatenate([prompt_tail, live_seqs], axis=2), t, reach, axis=2)
      log_probs = ban(log_probs, history.reshape(batch * k, reach), banned)
    log_probs = log_probs.reshape(batch, k, vocab)
    candidates = (live_scores[..., None] + log_probs).reshape(batch, k * vocab)
    scores, index = jax.lax.top_k(candidates, 2 * k)
    origin, token = index // vocab, (index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seqs, origin[..., None], axis=1).at[:, :, t].set(token)
    stopped = (token == stop_token) if stop_token is not None else jnp.zeros_like(token, bool)
    done_scores, done_seqs = best(
        jnp.concatenate([done_scores, jnp.where(stopped, normalised(scores, t + 1,
                                                                    length_penalty), -jnp.inf)], 1),
        jnp.concatenate([done_seqs, seqs], 1), k=k)
    live_scores, live_seqs, origin, token = best(jnp.where(stopped, -jnp.inf, scores), seqs,
                                                 origin, token, k=k)
    continued = (jnp.arange(batch)[:, None] * k + origin).reshape(-1)
    return live_seqs, live_scores, done_seqs, done_scores, continued, token.reshape(-1)

  def step(carry, t):
    logits, state, *hypotheses = carry
    live_seqs, live_scores, done_seqs, done_scores, continued, token = select(
        t, logits, *hypotheses)
    state = state.take(continued, keep_media=True)  # A prompt's beams share its media.
    logits, state = extend(model, params, token[:, None], (next_positions + t)[:, None], state)
    return (logits[:, -1], state, live_seqs, live_scores, done_seqs, done_scores), None

  carry = (logits, state, live_seqs, live_scores, done_seqs, done_scores)
  (logits, _, *hypotheses), _ = jax.lax.scan(step, carry, jnp.arange(max_new_tokens - 1))
  live_seqs, live_scores, done_seqs, done_scores, _, _ = select(max_new_tokens - 1, logits,
                                                                *hypotheses)
  scores, seqs = best(
      jnp.concatenate([done_scores, normalised(live_scores, max_new_tokens, length_penalty)], 1),
      jnp.concatenate([done_seqs, live_seqs], 1), k=k)
  return seqs, scores
