"""Few-shot evaluation on the paper's benchmarks, from their official files:

  python -m flamingo_jax.evaluate --checkpoint=DIR --benchmark=vqav2 --data_dir=DIR \
      --shots=0,4,8,16,32

The model comes from a `flamingo_jax.save` directory (with its config, or with --config's,
which must have the same parameter shapes). Prints a table of the benchmark's metrics per
number of shots and writes them, with every prediction, to --output as JSON. Without
--checkpoint the model has random weights (a dry run of the pipeline).
"""

import dataclasses
import json
import pathlib

from absl import app, flags
import jax
from ml_collections import config_flags

from flamingo_jax import model_factory
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.data.mixtures import make_vocabulary
from flamingo_jax.evaluation import harness
from flamingo_jax.evaluation.benchmarks import BENCHMARKS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (default: the checkpoint's).")
flags.DEFINE_string("checkpoint", None, "A flamingo_jax.save directory.")
flags.DEFINE_enum("benchmark", None, sorted(BENCHMARKS), "Benchmark to run.")
flags.DEFINE_string("data_dir", None, "The benchmark's official files.")
flags.DEFINE_list("shots", ["0", "4", "8", "16", "32"], "Support examples per query.")
flags.DEFINE_string("vocabulary", None, "SentencePiece model or 'byte' (default: the config's).")
flags.DEFINE_string("output", None, "JSON results (default: eval_<benchmark>.json here).")
flags.DEFINE_enum("style", "open_flamingo", sorted(harness.prompts.FORMATS), "Prompt formats.")
flags.DEFINE_enum("selection", "random", ["random", "rices"], "How support examples are picked.")
flags.DEFINE_integer("batch_size", 8, "Queries per batch.")
flags.DEFINE_integer("num_samples", 0, "Queries to evaluate, a seeded subset (0: all).")
flags.DEFINE_integer("beam_size", 3, "Beams for captions and answers (1: greedy).")
flags.DEFINE_integer("seed", 0, "Seed of the subset and of random support examples.")
flags.mark_flags_as_required(["benchmark", "data_dir"])


def main(argv):
  del argv
  if FLAGS.checkpoint:
    model, params, config = orbax_io.load(FLAGS.checkpoint, FLAGS.config)
  elif FLAGS.config is not None:
    print("No --checkpoint: RANDOM weights, the numbers mean nothing.")
    config = FLAGS.config
    model, params = model_factory.create(config, jax.random.key(config.seed))
  else:
    raise app.UsageError("Give --checkpoint, --config or both.")
  vocabulary = make_vocabulary(FLAGS.vocabulary or config.data.vocabulary)
  settings = harness.Settings(style=FLAGS.style, selection=FLAGS.selection,
                              batch_size=FLAGS.batch_size, num_samples=FLAGS.num_samples,
                              beam_size=FLAGS.beam_size, seed=FLAGS.seed)
  results = {}
  for shots in map(int, FLAGS.shots):
    results[shots] = harness.evaluate(model, params, config, vocabulary, FLAGS.benchmark,
                                      FLAGS.data_dir, shots, settings)
  names = list(results[int(FLAGS.shots[0])]["metrics"])
  print(f"| {FLAGS.benchmark} shots | " + " | ".join(names) + " |")
  print("| --- " * (len(names) + 1) + "|")
  for shots, result in results.items():
    print(f"| {shots} | " + " | ".join(f"{100 * result['metrics'][n]:.2f}" for n in names) + " |")
  output = pathlib.Path(FLAGS.output or f"eval_{FLAGS.benchmark}.json")
  output.write_text(json.dumps({"benchmark": FLAGS.benchmark, "checkpoint": FLAGS.checkpoint,
                                "settings": dataclasses.asdict(settings), "results": results},
                                indent=2))
  print(f"Wrote {output}.")


if __name__ == "__main__":
  app.run(main)
