"""Episodic support (novel-word binding): each query brings its own support examples, whose
made-up words mean nothing outside its episode, and is prompted with the first N of them. The
answers are generated as for VQA (generation.py).

    support = episode_pool(queries)        # every episode's support examples, in order
    chosen = episode_support(queries, 4)   # [Q, 4] indices into support
"""

import numpy as np

from flamingo_jax.evaluation.datasets import Example


def episode_pool(queries: list[Example]) -> list[Example]:
  """The queries' support examples, episode after episode."""
  return [s for q in queries for s in q.support]


def episode_support(queries: list[Example], shots: int) -> np.ndarray:
  """Indices [Q, shots] of each query's own first `shots` support examples in
  `episode_pool(queries)`."""
  sizes = np.array([len(q.support) for q in queries])
  if shots > sizes.min():
    raise ValueError(f"{shots} shots, but an episode has only {sizes.min()} support examples")
  starts = np.cumsum(sizes) - sizes
  return starts[:, None] + np.arange(shots)
