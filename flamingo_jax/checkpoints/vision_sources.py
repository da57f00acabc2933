"""A vision-tower checkpoint (OpenCLIP; Hugging Face CLIP or SigLIP) as the frozen tower of a new
Flamingo checkpoint (`flamingo_jax.save` directory), optionally with a Hugging Face LM as its
frozen LM:

    out = vision_sources.convert_vision("open_clip", "ViT-L-14.pt", config, "clip_flamingo",
                                        lm_path="path/to/Llama-2-7b-hf")
    model, params, config = flamingo_jax.load(out)

The checkpoint's own config (checkpoints/vit.py) replaces `config.model.vision`, and its image
preprocessing `model.image_preprocessing` (CLIP's mean and std for CLIP and OpenCLIP towers,
SigLIP's for SigLIP). With `lm_path`, the LM's config replaces model.lm and its tokenizer is
saved beside the parameters, as lm_sources.convert_lm does. The rest (the resampler, which
projects the tower's width to its own; the gated blocks; without `lm_path` the LM) starts fresh
from `config`. `python -m flamingo_jax.checkpoints.convert --from open_clip` (or `--from hf`
with a CLIP or SigLIP directory) is its command line.
"""

import copy
import functools
import json
import pathlib

import jax.numpy as jnp
import ml_collections

from flamingo_jax.checkpoints import lm_sources, vit
from flamingo_jax.configs.base import CLIP_PREPROCESSING, SIGLIP_PREPROCESSING
from flamingo_jax.flamingo.model import lm_config


def is_hf_vision(path) -> bool:
  """Whether `path` is a Hugging Face directory of a CLIP or SigLIP model (not an LM)."""
  config = pathlib.Path(path) / "config.json"
  return config.exists() and json.loads(config.read_text()).get(
      "model_type") in vit.HF_MODEL_TYPES


def hf_source(path, model_cfg=None):
  """(vision section, image preprocessing, import_tower(vision, **kwargs) -> (params,
  ImportReport)) of a Hugging Face CLIP or SigLIP directory; `model_cfg` is OpenCLIP's only."""
  del model_cfg
  fields = vit.vision_config_from_hf(json.loads((pathlib.Path(path) / "config.json").read_text()))
  preprocessing = CLIP_PREPROCESSING if fields["class_token"] else SIGLIP_PREPROCESSING
  return fields, preprocessing, functools.partial(vit.import_hf_vision, path)


def open_clip_source(path, model_cfg: dict | None = None):
  """As `hf_source`, of an OpenCLIP checkpoint and its open_clip model config (default the
  directory's open_clip_config.json, else the tensors' shapes)."""
  tensors, dir_cfg = vit.open_clip_files(path)
  model_cfg = model_cfg or dir_cfg
  fields = vit.vision_config_from_open_clip(tensors, model_cfg,
                                            vit.open_clip_prefix(set(tensors.keys())))
  return fields, CLIP_PREPROCESSING, functools.partial(vit.import_open_clip, path,
                                                       model_cfg=model_cfg)


SOURCES = {"hf": hf_source, "open_clip": open_clip_source}


def with_vision(config: ml_collections.ConfigDict, fields: dict,
                preprocessing: dict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.vision is `fields` and model.image_preprocessing
  `preprocessing`."""
  config = copy.deepcopy(config)
  config.model.vision = ml_collections.ConfigDict(fields)
  config.model.image_preprocessing = ml_collections.ConfigDict(preprocessing)
  return config


def convert_vision(source: str, path, config: ml_collections.ConfigDict, out, *,
                   lm_path=None, model_cfg: dict | None = None) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of the vision checkpoint `path` (format `source`:
  "hf" or "open_clip"), with the Hugging Face LM `lm_path` or a fresh one (module docstring);
  returns its directory."""
  fields, preprocessing, import_tower = SOURCES[source](path, model_cfg)
  config = with_vision(config, fields, preprocessing)
  dtype = lambda model_config: jnp.dtype(model_config.param_dtype)
  importers = {"vision_encoder": lambda model_config, rng: import_tower(
      model_config.vision, param_dtype=dtype(model_config), rng=rng)}
  vocabulary = None
  if lm_path is not None:
    lm = lm_sources.hf_source(lm_path)
    config, vocabulary = lm_sources.with_lm(config, lm.fields), lm.vocabulary
    importers["lm"] = lambda model_config, rng: lm.import_lm(
        lm_config(model_config), param_dtype=dtype(model_config), rng=rng)
  return lm_sources.write(config, out, importers, vocabulary)
