"""A Flamingo checkpoint directory: `params/` (orbax) and `config.json` (the resolved config).

Every directory this library writes, by training or by conversion, has this layout, so
`flamingo_jax.load` reads any of them.
"""

import json
import pathlib

import ml_collections
import orbax.checkpoint as ocp

from flamingo_jax.model_factory import abstract_params, build_model

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save(directory, params, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Writes params and the resolved config to `directory` (created; must not hold params)."""
  directory = pathlib.Path(directory).resolve()
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, params)
  return directory


def load_config_json(directory) -> ml_collections.ConfigDict:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{directory} is not a flamingo-jax checkpoint: no {CONFIG_FILE}.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load(directory):
  """(model, params, config) from a directory written by `save`."""
  directory = pathlib.Path(directory).resolve()
  config = load_config_json(directory)
  model = build_model(config)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory / PARAMS_DIR, abstract_params(model, config))
  return model, params, config
