"""A decoder-only LM checkpoint (a GGUF file, a Hugging Face directory) as the frozen LM of a
new Flamingo checkpoint (`flamingo_jax.save` directory), with the LM's tokenizer beside it:

    out = lm_sources.convert_lm("gguf", gguf_lm.smollm2_path(), config, "smollm2_flamingo")
    model, params, config = flamingo_jax.load(out)

The vision tower, resampler and gated blocks start fresh from `config`; its model.lm section
becomes the LM's own (`with_lm`), so that the saved config describes the saved parameters. What
refers to that section follows it (`<image>` and `<EOC>` take the first ids after the LM's
vocabulary, with fresh embedding rows; the gated blocks' head count, where the config ties it to
the LM's). The gated blocks' tanh gates start at 0, so the new checkpoint's logits on text are
the LM's own. `write`, which puts imported parts and fresh ones together, also writes
vision_sources.py's checkpoints. `python -m flamingo_jax.checkpoints.convert` is the command
line.

The tokenizer is saved as orbax_io.TOKENIZER_FILE, with the tokenizer_config.json that names its
EOS (`tokenizer.TokenizersVocabulary`): training on the checkpoint takes that file as
`data.vocabulary`; generate reads it.
"""

import copy
import functools
import json
import pathlib

import gguf
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax import model_factory
from flamingo_jax.checkpoints import gguf_lm, hf_lm, orbax_io
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers


def with_lm(config: ml_collections.ConfigDict, fields: dict) -> ml_collections.ConfigDict:
  """A copy of `config` whose model.lm section holds `fields` (LMConfig fields), and only them.

  The section is changed in place rather than replaced, so that the fields that refer to it
  (the special token ids, by default the gated blocks' heads) follow.
  """
  config = copy.deepcopy(config)  # The copy's references point within the copy.
  lm = config.model.lm
  with lm.unlocked():  # --config's is locked against new fields.
    for key in list(lm):
      # ConfigDict refuses to change a field's type (an int rope_theta to the file's float),
      # and a field deleted and set again refers to nothing: only those go.
      if key not in fields or type(lm[key]) is not type(fields[key]):
        del lm[key]
    lm.update(fields)
  return config


def gguf_source(path):
  """(LMConfig fields, TokenizersVocabulary, import_lm(lm_config, **kwargs) -> (params,
  ImportReport)) of a GGUF file."""
  reader = gguf.GGUFReader(path)

  def import_lm(config, **kwargs):
    params, _, report = gguf_lm.import_lm(path, config, **kwargs)
    return params, report
  return gguf_lm.lm_config_from_gguf(reader), gguf_lm.load_vocabulary(reader), import_lm


def hf_source(path):
  """As `gguf_source`, of a Hugging Face checkpoint directory."""
  hf = json.loads((pathlib.Path(path) / "config.json").read_text())
  return (hf_lm.lm_config_from_hf(hf), hf_lm.load_vocabulary(path),
          functools.partial(hf_lm.import_lm, path))


SOURCES = {"gguf": gguf_source, "hf": hf_source}


def write(config: ml_collections.ConfigDict, out, importers: dict,
          vocabulary=None) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of `config`: the parts that `importers` names
  ({"vision_encoder": fn, "lm": fn}, fn(model config, rng) -> (params, ImportReport)) from
  their checkpoints, the rest fresh; `vocabulary` (a TokenizersVocabulary) beside them."""
  flat = model_factory.unscanned(config)  # The layout of imported parts; `save` takes config's.
  model = model_factory.build_model(flat)
  fresh_rng, import_rng = jax.random.split(jax.random.key(config.seed))
  # Compiled without the imported parts in its outputs, so that their random initialisation is
  # dead code: a large part is never allocated twice.
  params = jax.jit(lambda rng: {k: v for k, v in model_factory.init_params(
      model, flat, rng).items() if k not in importers})(fresh_rng)
  for name, import_part in importers.items():
    params[name], report = import_part(flat.model, import_rng)
    print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  if vocabulary is not None:
    vocabulary.save(out / orbax_io.TOKENIZER_FILE)
  return out


def convert_lm(source: str, path, config: ml_collections.ConfigDict, out) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of the LM checkpoint `path` (format `source`) with a
  fresh vision tower and bridge of `config` (module docstring); returns its directory."""
  fields, vocabulary, import_lm = SOURCES[source](path)
  importers = {"lm": lambda model_config, rng: import_lm(
      lm_config(model_config), param_dtype=jnp.dtype(model_config.param_dtype), rng=rng)}
  return write(with_lm(config, fields), out, importers, vocabulary)
