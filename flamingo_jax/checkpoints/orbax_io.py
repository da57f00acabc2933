"""A Flamingo checkpoint directory: `params/` (orbax) and `config.json` (the resolved config);
one converted from an LM checkpoint also holds that LM's tokenizer (data.tokenizer.TOKENIZER_FILE).

Every directory this library writes, by training or by conversion, has this layout, so
`flamingo_jax.load` reads any of them. The parameters are stored unscanned (one subtree per
block, flamingo_jax.flamingo.scan), whatever `config.model.scan_layers` says, so that a
checkpoint loads into a model with either layout.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import orbax.checkpoint as ocp

from flamingo_jax import sharding
from flamingo_jax.flamingo.factory import abstract_params_and_axes, build_model, unscanned
from flamingo_jax.flamingo.scan import stack_layers, unstack_layers
from flamingo_jax.flamingo.trainable import is_trainable

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save(directory, params, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes params (in the layout of `config`) and the resolved config to `directory` (created;
  must not hold params)."""
  directory = pathlib.Path(directory).resolve()
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, unstack_layers(params, config.model))
  return directory


def load_config_json(directory) -> ml_collections.ConfigDict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{directory} is not a flamingo-jax checkpoint: no {CONFIG_FILE}.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_unscanned(directory, abstract):
  """The unscanned parameters of a `save` directory; abstract: their tree of
  ShapeDtypeStructs, whose shardings place them and whose dtypes they are cast to."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(pathlib.Path(directory).resolve() / PARAMS_DIR, abstract)


def placement(config: ml_collections.ConfigDict, mesh: Mesh, frozen_dtype: str | None = None):
  """The parameters of `config` (in its layout) as ShapeDtypeStructs, nothing allocated: each
  placed on `mesh` by its logical axes (`config.partitioning.rules`, as training places them),
  the frozen ones (`config.model.trainable`) in `frozen_dtype` (default:
  `config.train.frozen_dtype`, which `config.precision` sets)."""
  abstract, axes = abstract_params_and_axes(build_model(config), config)
  frozen_dtype = jnp.dtype(frozen_dtype or config.train.frozen_dtype)

  def placed(path, x, place):
    trainable = is_trainable("/".join(k.key for k in path), config.model.trainable)
    return jax.ShapeDtypeStruct(x.shape, x.dtype if trainable else frozen_dtype, sharding=place)
  return jax.tree_util.tree_map_with_path(
      placed, abstract, sharding.shardings(axes, abstract, mesh, sharding.rules(config)))


def restore(directory, config: ml_collections.ConfigDict, mesh: Mesh,
            frozen_dtype: str | None = None):
  """The parameters of a `save` directory in the layout of `config`, placed as `placement`
  says and read by orbax straight into their shards, on every host its own."""
  params = restore_unscanned(directory, placement(unscanned(config), mesh, frozen_dtype))
  if not config.model.scan_layers:
    return params
  # Stored unscanned: stacked on the devices, into the scanned layout's shardings.
  scanned = placement(config, mesh, frozen_dtype)
  return jax.jit(functools.partial(stack_layers, model_config=config.model),
                 out_shardings=jax.tree.map(lambda x: x.sharding, scanned))(params)


def load(directory, config: ml_collections.ConfigDict | None = None, mesh: Mesh | None = None,
         frozen_dtype: str | None = None):
  """(model, params, config) from a directory written by `save`: params in the layout of
  `config`, by default the stored config (another config must give the same parameter shapes: a
  dtype, the layer scan or the data may differ), sharded over `mesh` (default: this host's first
  device) as `restore` places them, the frozen ones in `frozen_dtype` (default: the config's
  `train.frozen_dtype`; "bfloat16" halves their memory, as the paper trains them)."""
  config = load_config_json(directory) if config is None else config
  # The checkpoint's own shardings name the devices it was written from, which another machine
  # (or device count) does not have: the placement is always this run's.
  params = restore(directory, config, mesh or sharding.one_device_mesh(), frozen_dtype)
  return build_model(config), params, config
