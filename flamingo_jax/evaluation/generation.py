"""Open-ended evaluation (captioning, VQA, video QA, binding): beam search from each prompt
until `<EOC>`, the best beam's text post-processed into the answer (`prompts.postprocess`)."""

import jax.numpy as jnp
import numpy as np
import seqio

from flamingo_jax.data import tokenizer
from flamingo_jax.decode import beam_search
from flamingo_jax.evaluation import prompts

# OpenFlamingo's generation lengths.
MAX_NEW_TOKENS = {"caption": 20, "vqa": 5, "video_vqa": 5, "binding": 5}


def generate_answers(model, params, images, tokens, positions, *, task: str,
                     vocabulary: seqio.Vocabulary, stop_token: int, max_new_tokens: int,
                     beam_size: int, length_penalty: float) -> list[str]:
  """images float32 [B, M, T, S, S, 3], left-padded prompts tokens / positions int32 [B, L] ->
  the B answers, each its best beam up to `stop_token`, post-processed for `task`."""
  sequences, _ = beam_search(model, params, jnp.asarray(images), jnp.asarray(tokens),
                             max_new_tokens, beam_size=beam_size, length_penalty=length_penalty,
                             stop_token=stop_token, positions=jnp.asarray(positions))
  return [prompts.postprocess(tokenizer.decode_text(row, vocabulary, stop_token), task)
          for row in np.asarray(sequences[:, 0])]
