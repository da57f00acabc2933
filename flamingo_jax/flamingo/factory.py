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


def abstract_params_and_axes(model: Flamingo, config: ml_collections.ConfigDict):
  """(shapes, logical axes) of the parameters, from one trace of `model.init` (jax.eval_shape:
  nothing is allocated): trees like the params of ShapeDtypeStructs and of PartitionSpecs of
  logical axis names."""
  boxed = jax.eval_shape(model.init, jax.random.key(0), *example_inputs(config))["params"]
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def create(config: ml_collections.ConfigDict, rng: jax.Array):
  """(model, params) with random initialisation of every part, frozen parts included."""
  model = build_model(config)
  return model, init_params(model, config, rng)
