"""Config files: a Python file each, with `get_config() -> ml_collections.ConfigDict`.

The files of this package (tiny, demo, demo_smollm2, flamingo_3b, flamingo_9b, flamingo_80b)
load by name from an installed package as well as from a checkout, whose top-level `configs/`
is this folder; any other file loads by its path. `base` holds the pieces they are built from.
"""

import importlib.util
import pathlib

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a config file; a bare name like "tiny" is one of this package's."""
  file = pathlib.Path(path)
  if not file.exists() and not file.suffix:
    file = CONFIG_DIR / f"{path}.py"
  if not file.exists():
    raise FileNotFoundError(f"No config file at {path!r} (looked in {file}).")
  spec = importlib.util.spec_from_file_location(f"flamingo_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
