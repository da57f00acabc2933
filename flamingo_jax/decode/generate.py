"""Decoding with a key/value cache: the media are encoded and the prompt is read once, then one
token a step. Greedy, or sampling with a temperature, top-k and top-p.

`model` is a Flamingo, or a text-only `DecoderLM` (visual None): the same decoding for both. A
Flamingo's decoders take the prompts' media encoded (`encode`: visual tokens after the
resampler), so that a caller that sees an image again (few-shot support examples, in query after
query) encodes it once.

A batch holds prompts of different lengths left-padded (`left_pad`): padding has position -1,
which no token attends to, so every prompt's tokens sit at positions 0..n-1 and its
continuation at n, n+1, ...; the batch decodes exactly as its prompts would one by one.
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.flamingo.model import Flamingo, FlamingoDecodeState
from flamingo_jax.lm.model import DecodeState, DecoderLM


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Token lists -> (tokens [B, L] int32, positions [B, L] int32), right-aligned; the padding
  has position -1. L: `length`, by default the longest prompt's."""
  length = length or max(len(p) for p in prompts)
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  positions = np.full((len(prompts), length), -1, np.int32)
  for row, prompt in enumerate(prompts):
    if len(prompt):
      tokens[row, -len(prompt):] = prompt
      positions[row, -len(prompt):] = np.arange(len(prompt))
  return tokens, positions


# XLA:CPU hands every dot to YNNPACK by default (jaxlib 0.10). On the vision tower's and the
# resampler's matmuls (33 images: 1650 x 768 x 3072) its kernels ran 10-17% slower than XLA's
# own Eigen dots, and on the LM's smaller ones faster (docs/design.md, "Decoding"), so only
# media encoding leaves them out. The option is a field of XLA's DebugOptions, which every
# backend's compiler takes and only XLA:CPU reads.
ENCODE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def visual_tokens(model: Flamingo, params, images):
  """images [B, M, T, H, W, 3] float32 -> visual tokens [B, M, R, D]: what decoding conditions
  on. Each medium is encoded on its own (its T frames together), so a medium's tokens do not
  depend on what it is batched with.

  Traceable, for a program that encodes as one of its parts (train/serving.py); `encode` is it
  compiled as a program of its own, with ENCODE_COMPILER_OPTIONS (a jit with compiler options
  cannot nest in another)."""
  return model.apply({"params": params}, images, method=Flamingo.encode_media)


encode = jax.jit(visual_tokens, static_argnames="model",
                 compiler_options=ENCODE_COMPILER_OPTIONS)


def prefill(model: Flamingo | DecoderLM, params, visual, tokens, positions, room: int):
  """Projects the visual tokens to every gated block's keys and values and reads the prompts
  into a cache with `room` more slots.

  visual [B, M, R, D] (`encode`; None for a DecoderLM); tokens, positions [B, L] (positions None:
  0..L-1). Returns (logits after the last prompt token [B, V], the decode state, the next
  token's positions [B]).
  """
  variables = {"params": params}
  length = tokens.shape[1]
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
  if isinstance(model, DecoderLM):
    state = DecodeState.zeros(model.config, tokens.shape[0], length + room, model.dtype)
  else:
    media = model.apply(variables, visual, method=Flamingo.media_kv)
    state = FlamingoDecodeState.start(model.config, media, length + room,
                                      jnp.dtype(model.config.dtype))
  logits, state = extend(model, params, tokens, positions, state, last_only=True)
  return logits[:, -1], state, jnp.max(positions, axis=1) + 1


def extend(model: Flamingo | DecoderLM, params, tokens, positions,
           state: FlamingoDecodeState | DecodeState, last_only: bool = False):
  """Appends tokens [B, L] at positions [B, L] to the cache: (logits [B, L, V] (L = 1 when
  `last_only`), new state). Both models' `extend` take the same arguments."""
  return model.apply({"params": params}, tokens, positions, state, last_only, method="extend")


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """logits [B, V] scaled by 1 / temperature, with -inf outside the `top_k` largest (0: all)
  and outside the smallest set whose probability reaches `top_p` (the nucleus), in the order
  of Hugging Face's samplers."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    descending = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(descending, axis=-1)
    # A token stays if the tokens ranked above it hold less than top_p (the first always does).
    keep = jnp.cumsum(probs, axis=-1) - probs < top_p
    threshold = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
  return logits


def choose(logits, rng, temperature: float, top_k: int, top_p: float):
  """Next tokens [B] int32: the argmax at temperature 0, otherwise a sample."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "stop_token",
                                             "temperature", "top_k", "top_p"))
def generate(model: Flamingo | DecoderLM, params, visual, tokens, max_new_tokens: int, *,
             positions=None, stop_token: int | None = None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, rng=None):
  """visual [B, M, R, D] (`encode`; None for a DecoderLM); prompts tokens [B, L] (left-padded
  with their `positions`, or all of length L) -> new tokens [B, max_new_tokens] int32.

  temperature 0 is greedy decoding; otherwise tokens are sampled (needs `rng`) from the logits
  filtered by `filter_logits`. After a sequence emits `stop_token` (e.g. `<EOC>`) it keeps
  emitting it.
  """
  logits, state, next_positions = prefill(model, params, visual, tokens, positions,
                                          max_new_tokens - 1)
  return generate_from_prefill(model, params, logits, state, next_positions, max_new_tokens,
                               stop_token=stop_token, temperature=temperature, top_k=top_k,
                               top_p=top_p, rng=rng)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "stop_token",
                                             "temperature", "top_k", "top_p"))
def generate_from_prefill(model: Flamingo | DecoderLM, params, logits, state, next_positions,
                          max_new_tokens: int, *, stop_token: int | None = None,
                          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                          rng=None):
  """`generate` after `prefill(..., room=max_new_tokens - 1)`: from its logits [B, V], decode
  state and next positions [B], the new tokens [B, max_new_tokens]: the first chosen from the
  logits, each other one a cached step."""
  if temperature and rng is None:
    raise ValueError("Sampling (temperature > 0) needs an rng.")
  rng = jax.random.key(0) if rng is None else rng
  pick = functools.partial(choose, temperature=temperature, top_k=top_k, top_p=top_p)
  first = pick(logits, jax.random.fold_in(rng, 0))

  def step(carry, t):
    token, state, done = carry
    logits, state = extend(model, params, token[:, None], (next_positions + t - 1)[:, None],
                           state)
    next_token = pick(logits[:, -1], jax.random.fold_in(rng, t))
    if stop_token is not None:
      done = done | (token == stop_token)
      next_token = jnp.where(done, stop_token, next_token)
    return (next_token, state, done), next_token

  done = jnp.zeros(first.shape, bool)
  _, rest = jax.lax.scan(step, (first, state, done), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)
