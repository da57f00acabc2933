"""IDEFICS-80B's serving programs (encoding the images, the prefill over the prompt, one cached
beam-search step) compiled for a TPU topology on this machine (libtpu, no TPU), with the model
section `checkpoints.idefics` makes of its config.json: per-chip memory against HBM, model
FLOPs, compile time.

  python benchmarks/aot_idefics.py --topology=v5p:2x2x1 --mesh=1,1,4

The sizes are IDEFICS-80B's as its model card gives them: LLaMA-65B (80 layers, width 8192,
64 heads, MLP 22016, 32,000 tokens and IDEFICS's 2 added rows), OpenCLIP ViT-H/14 at 224 px
(32 layers, width 1280), a resampler of 6 layers with 64 latents and 16 heads of 96, a gated
block before every 4th LM layer. The switches that change the memory by kilobytes (q/k norms,
the gates' shape) take transformers' `IdeficsConfig` defaults. Frozen weights in bfloat16, as
`flamingo_jax.load(dir, config, mesh=, frozen_dtype="bfloat16")` places them.
"""

from absl import app, flags
import ml_collections

from flamingo_jax.checkpoints import idefics
from flamingo_jax.configs.base import training_sections
from flamingo_jax.train import serving

FLAGS = flags.FLAGS
flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology name.")
flags.DEFINE_list("mesh", ["1", "1", "4"], "data,fsdp,tensor sizes of the device mesh.")
flags.DEFINE_integer("batch", 8, "Prompts decoded together.")
flags.DEFINE_integer("length", 1024, "Tokens of a prompt.")
flags.DEFINE_integer("images", 33, "Images of a prompt (32 shots and the query).")
flags.DEFINE_integer("beams", 3, "Beams per prompt; 1: greedy decoding.")

# IDEFICS-80B's config.json, in transformers' IdeficsConfig terms.
IDEFICS_80B = dict(
    model_type="idefics", vocab_size=32000, additional_vocab_size=2, hidden_size=8192,
    intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64, rms_norm_eps=1e-5,
    hidden_act="silu", max_position_embeddings=2048, cross_layer_interval=4, use_resampler=True,
    tie_word_embeddings=False, eos_token_id=2,
    vision_config=dict(embed_dim=1280, image_size=224, intermediate_size=5120, patch_size=14,
                       num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu"),
    perceiver_config=dict(resampler_depth=6, resampler_n_latents=64, resampler_n_heads=16,
                          resampler_head_dim=96))
IMAGE_TOKEN_ID = 32001  # <fake_token_around_image> is 32000.


def serving_config() -> ml_collections.ConfigDict:
  """IDEFICS-80B's model section, scanned and rematerialised as the paper's 80B config is, in
  bfloat16, with the training sections' mesh and partitioning rules."""
  config = ml_collections.ConfigDict(training_sections())
  config.seed = 0
  config.model = idefics.model_section(IDEFICS_80B, IMAGE_TOKEN_ID, dtype="bfloat16",
                                       remat="full", scan_layers=True)
  return config


def main(argv):
  del argv
  print(serving.report(serving_config(), FLAGS.topology, FLAGS.batch, FLAGS.length,
                       FLAGS.images, 20, FLAGS.beams, "bfloat16", FLAGS.mesh), flush=True)


if __name__ == "__main__":
  app.run(main)
