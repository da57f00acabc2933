"""Trains a config: `python -m flamingo_jax.train --config=configs/tiny.py --workdir=DIR`.

Any field can be overridden, e.g. `--config.train.num_steps=1000 --config.mesh.tensor=4`. On a
multi-host TPU slice, run the same command on every host with `--multihost`; on machines of your
own, say instead where process 0 listens, how many processes there are and which one this is
(`flamingo_jax.distributed`). Rerunning in the same workdir resumes from its latest checkpoint.
"""

import pathlib

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

from flamingo_jax import distributed
from flamingo_jax.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard logs go here.")
flags.mark_flags_as_required(["config", "workdir"])


def log_path() -> pathlib.Path:
  """The workdir's train.log; a bucket's workdir (gs://) is no local path: then a temp file."""
  if "://" in FLAGS.workdir:
    return console.temporary_log("train")
  return pathlib.Path(FLAGS.workdir) / "train.log"


def main(argv):
  del argv
  distributed.initialize()
  trainer.train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  console.run(main, log_path)
