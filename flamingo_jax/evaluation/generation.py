"""Open-ended evaluation (captioning, VQA, video QA, binding): beam search from each prompt
until the stop token (`<EOC>`; IDEFICS's EOS), the best beam's text read into the answer as the
prompt style reads it (`prompts.postprocess`, `idefics_prompts.Template.answer`)."""

from typing import Callable

import seqio

from flamingo_jax import sharding
from flamingo_jax.data import tokenizer
from flamingo_jax.decode import beam_search

# OpenFlamingo's generation lengths.
MAX_NEW_TOKENS = {"caption": 20, "vqa": 5, "video_vqa": 5, "binding": 5}


def generate_answers(model, params, visual, tokens, positions, *, answer: Callable[[str], str],
                     banned: tuple[tuple[int, ...], ...], vocabulary: seqio.Vocabulary,
                     stop_token: int, max_new_tokens: int, beam_size: int,
                     length_penalty: float) -> list[str]:
  """visual tokens [B, M, R, D], left-padded prompts tokens / positions int32 [B, L] (on any
  mesh, any hosts) -> the B answers, on every host: each the text of its best beam up to
  `stop_token` (never completing a `banned` token sequence), read by `answer`."""
  sequences, _ = beam_search(model, params, visual, tokens, max_new_tokens, beam_size=beam_size,
                             length_penalty=length_penalty, stop_token=stop_token,
                             positions=positions, banned=banned)
  return [answer(tokenizer.decode_text(row, vocabulary, stop_token))
          for row in sharding.gather(sequences[:, 0])]
