"""Support examples for few-shot prompts: random, or RICES (Retrieval-based In-Context Example
Selection, Yang et al. 2022; the paper's appendix B.1.5): the support examples whose images are
most similar to the query's, by cosine similarity of the frozen vision encoder's mean-pooled
features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.flamingo.model import Flamingo


@functools.partial(jax.jit, static_argnames="model")
def pooled_features(model: Flamingo, params, images):
  """images [N, H, W, 3] (normalised) -> unit-norm mean-pooled vision features [N, C]."""
  features = model.apply({"params": params}, images, method=Flamingo.vision_features)
  pooled = features.reshape(features.shape[0], -1, features.shape[-1]).mean(axis=1)
  pooled = pooled.astype(jnp.float32)
  return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def rices(query_features: np.ndarray, support_features: np.ndarray, shots: int) -> np.ndarray:
  """[Q, C], [S, C] unit-norm -> support indices [Q, shots], least similar first, so that the
  most similar example sits next to the query (as OpenFlamingo orders them)."""
  similarity = query_features @ support_features.T
  best = np.argsort(-similarity, axis=1, kind="stable")[:, :shots]
  return best[:, ::-1]


def random_support(num_queries: int, num_support: int, shots: int,
                   rng: np.random.Generator) -> np.ndarray:
  """Support indices [Q, shots]: a fresh random draw without repeats for each query."""
  return np.stack([rng.choice(num_support, shots, replace=False) for _ in range(num_queries)])
