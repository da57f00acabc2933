"""Compile time of Flamingo's forward pass and of its training gradient (with respect to the
trainable parameters), with the layer stack unrolled and scanned (`config.model.scan_layers`), on
this machine's default backend. Parameters and inputs are abstract, so nothing is allocated and
the paper's sizes compile too.

  python benchmarks/compile_time.py --config=tiny --num_layers=24
  python benchmarks/compile_time.py --config=flamingo_80b --what=forward
"""

import functools
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from flamingo_jax.flamingo import factory
from flamingo_jax.configs import load_config
from flamingo_jax.flamingo import trainable

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "tiny", "Config name or file.")
flags.DEFINE_integer("num_layers", 0, "LM blocks (0: the config's).")
flags.DEFINE_integer("batch", 2, "Sequences per batch.")
flags.DEFINE_integer("length", 32, "Tokens per sequence (one image).")
flags.DEFINE_list("what", ["forward", "gradient"], "forward and / or gradient.")
flags.DEFINE_list("remat", ["none"], "Rematerialisation policies to compile with.")


def loss(model, train, frozen, images, tokens):
  logits = model.apply({"params": trainable.merge(train, frozen)}, images, tokens)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))


def seconds(fn, *args) -> tuple[float, float]:
  """(seconds to trace and lower, seconds to compile) `jax.jit(fn)` for `args`."""
  start = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  lowered_at = time.perf_counter()
  lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def main(argv):
  del argv
  config = load_config(FLAGS.config)
  if FLAGS.num_layers:
    config.model.lm.num_layers = FLAGS.num_layers
  images, tokens = factory.example_inputs(config, FLAGS.batch, length=FLAGS.length)
  images, tokens = jax.eval_shape(lambda: (images, tokens))
  c = config.model
  print(f"{FLAGS.config}: {c.lm.num_layers} LM blocks, gated blocks every {c.xattn.every} from "
        f"{c.xattn.start}, backend {jax.default_backend()}")
  print("| what | remat | layers | lower s | compile s |\n| --- | --- | --- | --- | --- |")
  for what in FLAGS.what:
    for remat in FLAGS.remat:
      for scan in (False, True):
        config.model.update(dict(remat=remat, scan_layers=scan))
        model = factory.build_model(config)
        params, _ = factory.abstract_params_and_axes(model, config)
        if what == "forward":
          times = seconds(lambda p, i, t: model.apply({"params": p}, i, t), params, images, tokens)
        else:
          train, frozen = trainable.split(params, config.model.trainable)
          grad = jax.grad(functools.partial(loss, model))
          times = seconds(grad, train, frozen, images, tokens)
        layout = "scanned" if scan else "unrolled"
        print(f"| {what} | {remat} | {layout} | {times[0]:.1f} | {times[1]:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
