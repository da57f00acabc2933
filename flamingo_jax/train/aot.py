"""Compile the real train step for a TPU topology on this machine (libtpu, no TPU needed), so a
pod plan is checked before it is paid for:

  python -m flamingo_jax.train.aot --config=configs/flamingo_80b.py --topology=v5p:8x8x8

Prints the mesh, the per-chip memory the compiled step needs (parameters, optimiser state and
batch shards as arguments, plus temporaries) against the chip's HBM, the FLOPs of one step and
the compile time. Nothing is allocated: parameters, state and batches are abstract, with the
shardings training would give them. Needs `pip install "jax[tpu]"` at the installed jax version.
"""

import time

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from flamingo_jax.flamingo import trainable as trainable_lib
from flamingo_jax import sharding
from flamingo_jax.train import pod
from flamingo_jax.train import trainer as trainer_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("topology", "v5p:8x8x8", "TPU topology name, e.g. v5p:8x8x8, v4:4x4x4.")


def abstract_batches(config: ml_collections.ConfigDict, trainer) -> dict:
  """One accumulate step's global batches as sharded ShapeDtypeStructs: every task of
  `config.data.tasks` at its batch size and lengths; video tasks at `media.num_frames`."""
  size = config.model.vision.image_size
  batches = {}
  for name, task in config.data.tasks.items():
    frames = task.media.num_frames if task.get("kind") == "video" else 1
    shapes = {
        "images": ((task.batch_size, task.max_images, frames, size, size, 3), jnp.float32),
        "tokens": ((task.batch_size, task.max_length), jnp.int32),
        "targets": ((task.batch_size, task.max_length), jnp.int32),
        "weights": ((task.batch_size, task.max_length), jnp.float32),
        "attach_to_next": ((task.batch_size,), jnp.bool_),
        "loss_weight": ((), jnp.float32)}
    batches[name] = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(
        trainer.mesh, trainer.rules, len(shape))) for k, (shape, dtype) in shapes.items()}
  return batches


def compile_step(config: ml_collections.ConfigDict, devices):
  """(trainer, compiled step, FLOPs, seconds to compile) on `devices` (a topology's)."""
  trainer = trainer_lib.Trainer(config, devices)
  _, frozen = trainable_lib.split(trainer.abstract_params, config.model.trainable)
  dtype = jnp.dtype(config.train.frozen_dtype)
  frozen = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s),
                        frozen, trainer.frozen_shardings)
  start = time.perf_counter()
  compiled, flops = trainer.compiled_step(trainer.abstract_state, frozen,
                                          abstract_batches(config, trainer))
  return trainer, compiled, flops, time.perf_counter() - start


def report(config: ml_collections.ConfigDict, topology: str) -> str:
  devices = pod.devices(topology)
  trainer, compiled, flops, seconds = compile_step(config, devices)
  kind = devices[0].device_kind
  params = sum(x.size for x in jax.tree.leaves(trainer.abstract_params))
  tokens = sum(t.batch_size * t.max_length for t in config.data.tasks.values())
  lines = [
      f"topology {topology}: {len(devices)} x {kind}",
      f"mesh {dict(trainer.mesh.shape)}",
      f"parameters {params / 1e9:.2f}B; one step: {len(config.data.tasks)} batches, "
      f"{tokens} tokens, microbatches {config.train.microbatches}",
      f"compiled in {seconds:.0f} s",
      f"per chip: {pod.memory(compiled, kind)}",
      f"model FLOPs per step per chip {flops:.3e} (matmuls and convolutions, no remat)",
  ]
  return "\n".join(lines)


def main(argv):
  del argv
  # Checked here rather than with mark_flags_as_required: benchmarks import this module.
  if FLAGS.config is None:
    raise app.UsageError("--config is required.")
  print(report(FLAGS.config, FLAGS.topology))


if __name__ == "__main__":
  console.run(main, lambda: console.temporary_log("aot"))
