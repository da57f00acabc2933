"""Close-ended evaluation (classification): the log-likelihood of every class name, then `<EOC>`,
after each prompt; the harness averages them over orders of the shots, and the benchmark says
how a query's scores become its prediction (`Benchmark.prediction`: the best class, or a score
of the positive one)."""

from typing import Callable

import jax
import numpy as np

from flamingo_jax import sharding
from flamingo_jax.decode import candidate_log_likelihoods, right_pad
from flamingo_jax.evaluation import prompts


def class_log_likelihoods(model, params, visual, tokens, positions, classes, format_,
                          vocabulary, chunk: int,
                          replicate: Callable[[np.ndarray], jax.Array]) -> np.ndarray:
  """visual tokens [B, M, R, D], left-padded prompts tokens / positions [B, L] (on any mesh, any
  hosts) -> [B, num classes] on every host: log p(class name, then `<EOC>` | prompt), `chunk`
  names per call (the last chunk padded to the same shape), the candidates placed on the
  prompts' devices by `replicate`."""
  candidates = [prompts.answer_tokens(format_, c, vocabulary) for c in classes]
  width = max(map(len, candidates))
  scores = []
  for start in range(0, len(candidates), chunk):
    part = candidates[start:start + chunk]
    tokens_c, mask = right_pad(part + [part[-1]] * (min(chunk, len(candidates)) - len(part)))
    tokens_c = np.pad(tokens_c, ((0, 0), (0, width - tokens_c.shape[1])))
    mask = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
    scores.append(sharding.gather(candidate_log_likelihoods(
        model, params, visual, tokens, replicate(tokens_c), replicate(mask),
        positions))[:, :len(part)])
  return np.concatenate(scores, axis=1)
