"""A Flamingo checkpoint directory: `params/` (orbax) and `config.json` (the resolved config);
one converted from an LM checkpoint also holds that LM's tokenizer (data.tokenizer.TOKENIZER_FILE).

Every directory this library writes, by training or by conversion, has this layout, so
`flamingo_jax.load` reads any of them. The parameters are stored unscanned (one subtree per
block, flamingo_jax.flamingo.scan), whatever `config.model.scan_layers` says, so that a
checkpoint loads into a model with either layout.
"""

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from flamingo_jax.flamingo.scan import stack_layers, unstack_layers
from flamingo_jax.flamingo.factory import abstract_params_and_axes, build_model, unscanned

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
  ShapeDtypeStructs, whose shardings (if any) place them."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(pathlib.Path(directory).resolve() / PARAMS_DIR, abstract)


def load(directory, config: ml_collections.ConfigDict | None = None):
  """(model, params, config) from a directory written by `save`, on this host's first device;
  params in the layout of `config`, by default the stored config (another config must give the
  same parameter shapes: a dtype, the layer scan or the data may differ)."""
  config = load_config_json(directory) if config is None else config
  flat = unscanned(config)
  # On this host's first device: the checkpoint's own shardings name the devices it was
  # written from, which another machine (or device count) does not have.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes, _ = abstract_params_and_axes(build_model(flat), flat)
  params = restore_unscanned(directory, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes))
  return build_model(config), stack_layers(params, config.model), config
