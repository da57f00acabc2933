"""A decoder-only LM checkpoint (a GGUF file, a Hugging Face directory) as the frozen LM of a
new Flamingo checkpoint (`flamingo_jax.save` directory), with the LM's tokenizer beside it:

    lm = lm_sources.gguf_source("SmolLM2-135M-Instruct.Q4_1.gguf")
    out = lm_sources.convert_lm(lm, lm_sources.with_lm(config, lm.fields), "smollm2_flamingo")
    model, params, config = flamingo_jax.load(out)

The vision tower, resampler and gated blocks start fresh from `config`, whose model.lm section
must be the LM's own, so that the saved config describes the saved parameters: `with_lm` makes
it so (the convert CLI's way), or the config states it (configs/demo_smollm2.py), and
`check_lm` names any field in which it differs. What refers to that section follows it
(`<image>` and `<EOC>` take the first ids after the LM's vocabulary, with fresh embedding rows;
the gated blocks' head count, where the config ties it to the LM's). The gated blocks' tanh
gates start at 0, so the new checkpoint's logits on text are the LM's own. `write`, which puts
imported parts and fresh ones together, also writes vision_sources.py's checkpoints.
`python -m flamingo_jax.checkpoints.convert` is the command line. `import_gguf` reads a GGUF
file's LM: the Hugging Face table (hf_lm) under the file's names (gguf_lm).

The tokenizer is saved as data.tokenizer.TOKENIZER_FILE, with the tokenizer_config.json that names its
EOS (`tokenizer.TokenizersVocabulary`): training on the checkpoint takes that file as
`data.vocabulary`; generate reads it.
"""

import copy
import dataclasses
import functools
import json
import pathlib
from typing import Callable, NamedTuple

import gguf
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.checkpoints import gguf_lm, hf_lm, orbax_io
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.flamingo import factory
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers
from flamingo_jax.lm.model import LMConfig


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


def import_gguf(path, lm_config: LMConfig | None = None, shardings=None, *,
                param_dtype=jnp.float32, strict: bool = True, rng: jax.Array | None = None):
  """(params of `DecoderLM(config, param_dtype=param_dtype)`, config, ImportReport) from a GGUF
  file: the Hugging Face table of its architecture (hf_lm.layout) under the file's names
  (gguf_lm.layout); the report names tensors as the file does (`blk.0.attn_q.weight`).

  lm_config: default `gguf_lm.lm_config_from_gguf` of the file; the rest as in
  `hf_lm.import_lm`.
  """
  reader = gguf.GGUFReader(path)
  config = (LMConfig.from_dict(gguf_lm.lm_config_from_gguf(reader)) if lm_config is None
            else lm_config)
  arch = gguf_lm.architecture(reader)
  model_type, _ = gguf_lm.ARCHITECTURES[arch]
  sources = gguf_lm.layout(arch, config, hf_lm.layout(model_type, config, ()))
  params, report = hf_lm.import_lm_tensors(
      gguf_lm.GGUFTensors(reader), sources, config, str(path), shardings,
      param_dtype=param_dtype, strict=strict, rng=rng, ignore=gguf_lm.ignored(config))
  return params, config, report


class LMCheckpoint(NamedTuple):
  """An LM checkpoint `path`: its LMConfig fields, its tokenizer (a TokenizersVocabulary), and
  import_lm(lm_config, **kwargs) -> (params, ImportReport)."""
  path: str
  fields: dict
  vocabulary: tokenizer_lib.TokenizersVocabulary
  import_lm: Callable


def gguf_source(path) -> LMCheckpoint:
  """The LMCheckpoint of a GGUF file."""
  reader = gguf.GGUFReader(path)

  def import_lm(config, **kwargs):
    params, _, report = import_gguf(path, config, **kwargs)
    return params, report
  return LMCheckpoint(str(path), gguf_lm.lm_config_from_gguf(reader),
                      gguf_lm.load_vocabulary(reader), import_lm)


def hf_source(path) -> LMCheckpoint:
  """The LMCheckpoint of a Hugging Face checkpoint directory."""
  hf = json.loads((pathlib.Path(path) / "config.json").read_text())
  return LMCheckpoint(str(path), hf_lm.lm_config_from_hf(hf), hf_lm.load_vocabulary(path),
                      functools.partial(hf_lm.import_lm, path))


SOURCES = {"gguf": gguf_source, "hf": hf_source}


def write(config: ml_collections.ConfigDict, out, importers: dict,
          vocabulary=None) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of `config`: the parts that `importers` names
  ({"vision_encoder": fn, "lm": fn}, fn(model config, rng) -> (params, ImportReport)) from
  their checkpoints, the rest fresh; `vocabulary` (a TokenizersVocabulary) beside them."""
  flat = factory.unscanned(config)  # The layout of imported parts; `save` takes config's.
  model = factory.build_model(flat)
  fresh_rng, import_rng = jax.random.split(jax.random.key(config.seed))
  # Compiled without the imported parts in its outputs, so that their random initialisation is
  # dead code: a large part is never allocated twice.
  params = jax.jit(lambda rng: {k: v for k, v in factory.init_params(
      model, flat, rng).items() if k not in importers})(fresh_rng)
  for name, import_part in importers.items():
    params[name], report = import_part(flat.model, import_rng)
    print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  if vocabulary is not None:
    vocabulary.save(out / tokenizer_lib.TOKENIZER_FILE)
  return out


def check_lm(config: ml_collections.ConfigDict, lm: LMCheckpoint) -> None:
  """Raises a ValueError naming every LMConfig field in which `config`'s model.lm differs from
  the LM checkpoint's own fields (the new token rows aside: they are Flamingo's)."""
  ours = dataclasses.asdict(LMConfig.from_dict(config.model.lm))
  theirs = dataclasses.asdict(LMConfig.from_dict(
      lm.fields | {"num_extra_tokens": ours["num_extra_tokens"]}))
  differ = [f"model.lm.{k} is {ours[k]!r}, the checkpoint's {theirs[k]!r}"
            for k in ours if ours[k] != theirs[k]]
  if differ:
    raise ValueError(f"The config's model.lm does not describe the LM {lm.path}: "
                     + "; ".join(differ) + ".")


def convert_lm(lm: LMCheckpoint, config: ml_collections.ConfigDict, out) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of the LM checkpoint `lm` with a fresh vision tower and
  bridge of `config`, whose model.lm must be the LM's (`check_lm`; `with_lm` makes it so);
  returns its directory."""
  check_lm(config, lm)
  importers = {"lm": lambda model_config, rng: lm.import_lm(
      lm_config(model_config), param_dtype=jnp.dtype(model_config.param_dtype), rng=rng)}
  return write(config, out, importers, lm.vocabulary)
