"""Open-ended evaluation (captioning, VQA, video QA, binding): beam search from each prompt
until `<EOC>`, the best beam's text post-processed into the answer (`prompts.postprocess`)."""

import seqio

from flamingo_jax import sharding
from flamingo_jax.data import tokenizer
from flamingo_jax.decode import beam_search
from flamingo_jax.evaluation import prompts

# OpenFlamingo's generation lengths.
MAX_NEW_TOKENS = {"caption": 20, "vqa": 5, "video_vqa": 5, "binding": 5}


def generate_answers(model, params, visual, tokens, positions, *, task: str,
                     vocabulary: seqio.Vocabulary, stop_token: int, max_new_tokens: int,
                     beam_size: int, length_penalty: float) -> list[str]:
  """visual tokens [B, M, R, D], left-padded prompts tokens / positions int32 [B, L] (on any
  mesh, any hosts) -> the B answers, each its best beam up to `stop_token`, post-processed for
  `task`, on every host."""
  sequences, _ = beam_search(model, params, visual, tokens, max_new_tokens, beam_size=beam_size,
                             length_penalty=length_penalty, stop_token=stop_token,
                             positions=positions)
  return [prompts.postprocess(tokenizer.decode_text(row, vocabulary, stop_token), task)
          for row in sharding.gather(sequences[:, 0])]
