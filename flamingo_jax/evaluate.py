"""Few-shot evaluation on the paper's benchmarks, from their official files:

  python -m flamingo_jax.evaluate --checkpoint=DIR --benchmark=vqav2 --data_dir=DIR \
      --shots=0,4,8,16,32

The model comes from a `flamingo_jax.save` directory (with its config, or with --config's,
which must have the same parameter shapes), its parameters sharded over the config's mesh (all
devices; --mesh overrides its sizes) as training places them, the frozen ones in
--frozen_dtype. Prints a table of the benchmark's metrics per number of shots and writes them,
with every prediction, to --output as JSON. Without --checkpoint the model has random weights
(a dry run of the pipeline). Text goes through --vocabulary, else the checkpoint's
`tokenizer.json` when it has one, else the config's vocabulary (`config.data.vocabulary`).
"""

import dataclasses
import json
import pathlib

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags

from flamingo_jax import sharding
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.data import tokenizer
from flamingo_jax.evaluation import harness, metrics, prompts
from flamingo_jax.evaluation.benchmarks import BENCHMARKS
from flamingo_jax.flamingo import factory

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (default: the checkpoint's).")
flags.DEFINE_string("checkpoint", None, "A flamingo_jax.save directory.")
flags.DEFINE_enum("benchmark", None, sorted(BENCHMARKS), "Benchmark to run.")
flags.DEFINE_string("data_dir", None, "The benchmark's official files.")
flags.DEFINE_list("shots", ["0", "4", "8", "16", "32"], "Support examples per query.")
flags.DEFINE_string("vocabulary", None, "SentencePiece model, tokenizer.json or 'byte' "
                    "(default: the checkpoint's tokenizer.json, else the config's).")
flags.DEFINE_string("output", None, "JSON results (default: eval_<benchmark>.json here).")
flags.DEFINE_enum("style", "open_flamingo", sorted(prompts.FORMATS), "Prompt formats.")
flags.DEFINE_enum("selection", "random", ["random", "rices"], "How support examples are picked.")
flags.DEFINE_integer("batch_size", 8, "Queries per batch.")
flags.DEFINE_integer("num_samples", 0, "Queries to evaluate, a seeded subset (0: all).")
flags.DEFINE_integer("beam_size", 3, "Beams for captions and answers (1: greedy).")
flags.DEFINE_integer("seed", 0, "Seed of the subset and of random support examples.")
flags.DEFINE_enum("vqa_rule", "server", list(metrics.VQA_RULES),
                  "VQA accuracy: the evaluation server's or OpenFlamingo's normalisation.")
flags.DEFINE_float("frames_fps", 3.0, "Rate the video benchmarks' frames were extracted at.")
flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes of the device mesh (-1: the devices "
                  "left; default: the config's mesh).")
flags.DEFINE_string("frozen_dtype", None, "dtype of the frozen parameters, e.g. bfloat16 "
                    "(default: the config's param_dtype).")
flags.mark_flags_as_required(["benchmark", "data_dir"])


def output_path() -> pathlib.Path:
  return pathlib.Path(FLAGS.output or f"eval_{FLAGS.benchmark}.json")


def main(argv):
  del argv
  if FLAGS.config is None and not FLAGS.checkpoint:
    raise app.UsageError("Give --checkpoint, --config or both.")
  config = FLAGS.config if FLAGS.config is not None else orbax_io.load_config_json(
      FLAGS.checkpoint)
  mesh = sharding.command_line_mesh(config, FLAGS.mesh or ())
  if FLAGS.checkpoint:
    model, params, config = orbax_io.load(FLAGS.checkpoint, config, mesh, FLAGS.frozen_dtype)
  else:
    print("No --checkpoint: RANDOM weights, the numbers mean nothing.")
    model, params = factory.create(config, jax.random.key(config.seed))
  if FLAGS.vocabulary:
    vocabulary = tokenizer.make_vocabulary(FLAGS.vocabulary)
  elif FLAGS.checkpoint:
    vocabulary = tokenizer.checkpoint_vocabulary(FLAGS.checkpoint, config.data.vocabulary)
  else:
    vocabulary = tokenizer.make_vocabulary(config.data.vocabulary)
  settings = harness.Settings.for_style(
      FLAGS.style, selection=FLAGS.selection, batch_size=FLAGS.batch_size,
      num_samples=FLAGS.num_samples, beam_size=FLAGS.beam_size, vqa_rule=FLAGS.vqa_rule,
      frames_fps=FLAGS.frames_fps, seed=FLAGS.seed)
  results = {}
  for shots in map(int, FLAGS.shots):
    results[shots] = harness.evaluate(model, params, config, vocabulary, FLAGS.benchmark,
                                      FLAGS.data_dir, shots, settings)
  names = list(results[int(FLAGS.shots[0])]["metrics"])
  print(f"| {FLAGS.benchmark} shots | " + " | ".join(names) + " |")
  print("| --- " * (len(names) + 1) + "|")
  for shots, result in results.items():
    print(f"| {shots} | " + " | ".join(f"{100 * result['metrics'][n]:.2f}" for n in names) + " |")
  output = output_path()
  output.write_text(json.dumps({"benchmark": FLAGS.benchmark, "checkpoint": FLAGS.checkpoint,
                                "settings": dataclasses.asdict(settings), "results": results},
                                indent=2))
  print(f"Wrote {output}.")


if __name__ == "__main__":
  console.run(main, lambda: output_path().with_suffix(".log"))
