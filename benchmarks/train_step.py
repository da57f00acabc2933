"""A config's real training step run on this machine's accelerator: step time, tokens/s and the
model FLOPs utilisation (MFU: the step's matmul and convolution FLOPs, counted from its jaxpr by
train/flops.py without rematerialisation, over the step time and the chip's peak,
train/trainer.PEAK_FLOPS).

  python benchmarks/train_step.py --config=configs/flamingo_3b.py --batch_divisor=32
  python benchmarks/train_step.py --config=configs/tiny.py --config.precision=bfloat16 --steps=2

The step is train/aot.py's (the Trainer's compiled step with the config's shardings, every task
of the mixture in one step), run on concrete parameters (drawn from the config's seed, the
frozen ones stored as `config.precision` says) and on random batches of the tasks' shapes, each
task's batch size divided by --batch_divisor so that a pod's global batch fits the devices at
hand. `--config` and its overrides are train/aot.py's flag. Imports no TensorFlow, which
benchmarks/device_check.sh's GPU machines do not have. Prints one line and writes --json.
"""

import json
import statistics
import time

from absl import app, flags
import jax
import numpy as np

from flamingo_jax.train import aot
from flamingo_jax.train import trainer as trainer_lib

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_divisor", 1, "Each task's batch size is divided by this (at least "
                     "one sequence).")
flags.DEFINE_integer("steps", 5, "Timed steps, after one warm-up step.")
flags.DEFINE_string("json", "", "Where to write the result (default: nowhere).")


def random_batches(abstract: dict, media_token_id: int, vocab_size: int, seed: int = 0) -> dict:
  """Concrete batches of `abstract`'s shapes and shardings (aot.abstract_batches): normal
  pixels, random tokens with an `<image>` opening each of a sequence's equal chunks, as many
  chunks as it has images, every target weighted."""
  rng = np.random.default_rng(seed)
  out = {}
  for task, shapes in abstract.items():
    batch, num_images = shapes["images"].shape[:2]
    length = shapes["tokens"].shape[1]
    tokens = rng.integers(0, vocab_size, (batch, length), np.int32)
    tokens[:, np.arange(num_images) * length // num_images] = media_token_id
    values = dict(images=rng.standard_normal(shapes["images"].shape, np.float32),
                  tokens=tokens, targets=np.roll(tokens, -1, axis=1),
                  weights=np.ones((batch, length), np.float32),
                  attach_to_next=np.zeros((batch,), bool), loss_weight=np.float32(1.0))
    out[task] = {k: jax.device_put(v, shapes[k].sharding) for k, v in values.items()}
  return out


def measure(config) -> dict:
  """Compiles and runs the step; its timings, FLOPs and memory."""
  for task in config.data.tasks.values():
    task.batch_size = max(1, task.batch_size // FLAGS.batch_divisor)
  trainer, compiled, flops, compile_seconds = aot.compile_step(config, jax.devices())
  train, frozen = trainer.initial_params()
  state = trainer.initial_state(train)
  del train
  batches = random_batches(aot.abstract_batches(config, trainer), config.model.media_token_id,
                           config.model.lm.vocab_size)
  seconds = []
  for run in range(FLAGS.steps + 1):  # The first: warm-up.
    start = time.perf_counter()
    state, metrics = compiled(state, frozen, batches)
    jax.block_until_ready(metrics)
    if run:
      seconds.append(time.perf_counter() - start)
  step = statistics.median(seconds)
  tokens = trainer_lib.step_tokens(batches)
  kind = jax.devices()[0].device_kind
  peak = trainer_lib.PEAK_FLOPS.get(kind)
  memory = compiled.memory_analysis()
  return dict(
      device=kind, devices=jax.device_count(), mesh=dict(trainer.mesh.shape),
      precision=config.get("precision"), batch_sizes={
          name: t.batch_size for name, t in config.data.tasks.items()},
      tokens_per_step=tokens, parameters=sum(
          x.size for x in jax.tree.leaves(trainer.abstract_params)),
      compile_seconds=compile_seconds, step_seconds=seconds, median_step_seconds=step,
      tokens_per_second=tokens / step,
      model_flops_per_chip=flops, peak_flops_per_chip=peak,
      mfu=flops / step / peak if peak else None, loss=float(metrics["loss"]),
      memory_bytes=dict(arguments=memory.argument_size_in_bytes,
                        temporaries=memory.temp_size_in_bytes,
                        outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes))


def main(argv):
  del argv
  if FLAGS.config is None:
    raise app.UsageError("--config is required.")
  result = measure(FLAGS.config)
  mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (no peak known)"
  print(f"{result['devices']} x {result['device']}, {result['precision']}: step "
        f"{result['median_step_seconds']:.3f} s (median of {FLAGS.steps}), "
        f"{result['tokens_per_second']:.0f} tokens/s, MFU {mfu}, compiled in "
        f"{result['compile_seconds']:.0f} s", flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
