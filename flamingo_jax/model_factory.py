"""Building a Flamingo model and its parameters from a config."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.flamingo.model import Flamingo


def build_model(config: ml_collections.ConfigDict) -> Flamingo:
  return Flamingo(ml_collections.FrozenConfigDict(config.model))


def unscanned(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with its layer stack unrolled: the parameter layout checkpoints are stored in."""
  config = config.copy_and_resolve_references()
  config.model.scan_layers = False
  return config


def example_inputs(config: ml_collections.ConfigDict, batch: int = 1, num_media: int = 1,
                   num_frames: int = 1, length: int = 4):
  """Zero images [B, M, T, H, W, 3] and tokens [B, L] starting with `<image>`: init shapes."""
  size = config.model.vision.image_size
  images = jnp.zeros((batch, num_media, num_frames, size, size, 3), jnp.float32)
  tokens = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(config.model.media_token_id)
  return images, tokens


def init_params(model: Flamingo, config: ml_collections.ConfigDict, rng: jax.Array):
  """Random parameters for every part, frozen parts included; plain (unboxed) arrays."""
  variables = jax.jit(model.init)(rng, *example_inputs(config))
  return nn.meta.unbox(variables["params"])


def abstract_params(model: Flamingo, config: ml_collections.ConfigDict):
  """Shapes and dtypes of the parameters, without allocating them (jax.eval_shape)."""
  variables = jax.eval_shape(model.init, jax.random.key(0), *example_inputs(config))
  return nn.meta.unbox(variables["params"])


def logical_axes(model: Flamingo, config: ml_collections.ConfigDict):
  """The logical axis names of every parameter, as a tree of PartitionSpecs."""
  variables = jax.eval_shape(model.init, jax.random.key(0), *example_inputs(config))
  return nn.get_partition_spec(variables["params"])


def create(config: ml_collections.ConfigDict, rng: jax.Array):
  """(model, params) with random initialisation of every part, frozen parts included."""
  model = build_model(config)
  return model, init_params(model, config, rng)
