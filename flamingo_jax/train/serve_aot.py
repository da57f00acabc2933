"""Compile the serving programs for a TPU topology on this machine (libtpu, no TPU needed), so a
slice that serves a model is sized before it is paid for:

  python -m flamingo_jax.train.serve_aot --config=configs/flamingo_80b.py --topology=v5p:2x2x1 \
      --mesh=1,1,4

The programs are beam search's (flamingo_jax.train.serving), by default at the paper's 32-shot
captioning shape: encoding the images, the prefill and one cached decoding step. For each it
prints the per-chip memory (arguments, temporaries and the total against the chip's HBM, or
libtpu's word that it does not fit), the model FLOPs and the compile time. The parameters are
placed on the mesh (`config.mesh`; --mesh sets its data, fsdp and tensor sizes) as
`flamingo_jax.load(dir, config, mesh=, frozen_dtype=)` places them.
"""

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from flamingo_jax.train import serving

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology name, e.g. v5p:2x2x1, v5e:4x8.")
flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes of the device mesh (-1: the chips "
                  "left; default: the config's mesh).")
flags.DEFINE_integer("batch", 8, "Prompts decoded together.")
flags.DEFINE_integer("length", 1024, "Tokens of a prompt.")
flags.DEFINE_integer("images", 33, "Images of a prompt (32 shots and the query).")
flags.DEFINE_integer("new_tokens", 20, "Tokens generated at most (the cache's room).")
flags.DEFINE_integer("beams", 3, "Beams per prompt; 1: greedy decoding.")
flags.DEFINE_string("frozen_dtype", "bfloat16", "dtype of the frozen parameters.")
flags.mark_flag_as_required("config")


def main(argv):
  del argv
  print(serving.report(FLAGS.config, FLAGS.topology, FLAGS.batch, FLAGS.length, FLAGS.images,
                       FLAGS.new_tokens, FLAGS.beams, FLAGS.frozen_dtype, FLAGS.mesh or ()))


if __name__ == "__main__":
  console.run(main, lambda: console.temporary_log("serve_aot"))
