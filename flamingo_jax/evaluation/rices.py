"""Support examples for few-shot prompts: random, or RICES (Retrieval-based In-Context Example
Selection, Yang et al. 2022; the paper's appendix B.1.5): the support examples whose images are
most similar to the query's, by cosine similarity of the frozen vision encoder's mean-pooled
features. The features of a benchmark's split can be kept on disk (`stored_features`) and
reused by every later run with the same tower, as OpenFlamingo's `cache_rices_features.py`
does."""

import functools
import hashlib
import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
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


@jax.jit
def _tower_sums(tower_params):
  return jax.tree.map(lambda x: jnp.sum(jnp.abs(x.astype(jnp.float32))), tower_params)


def tower_fingerprint(params) -> str:
  """A digest of the vision tower's weights (each tensor's shape and absolute sum), which
  stored features must match: computed where the weights are, sharded or not."""
  tower = params["vision_encoder"]
  sums = jax.tree.leaves(jax.device_get(_tower_sums(tower)))
  shapes = [x.shape for x in jax.tree.leaves(tower)]
  return hashlib.sha256(repr((shapes, [f"{s:.6e}" for s in sums])).encode()).hexdigest()[:16]


def stored_features(path: pathlib.Path, ids: Sequence[str], fingerprint: str,
                    compute: Callable[[], np.ndarray]) -> np.ndarray:
  """Features [N, C] of the examples `ids` by this tower (`fingerprint`): read from `path` (an
  .npz) where it holds exactly these, else `compute()`d and written there by host 0. Every
  host decides the same (computing is collective on a multi-host mesh)."""
  digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
  stored = None
  if path.exists():
    with np.load(path) as f:
      if str(f["fingerprint"]) == fingerprint and str(f["ids"]) == digest:
        stored = f["features"]
  if np.all(multihost_utils.process_allgather(np.int32(stored is not None))):
    return stored
  features = compute()
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # np.savez would add .npz to a name without it.
      np.savez(f, features=features, fingerprint=fingerprint, ids=digest)
  return features
