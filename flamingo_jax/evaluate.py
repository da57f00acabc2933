"""Few-shot evaluation on the paper's benchmarks, from their official files:

  python -m flamingo_jax.evaluate --checkpoint=DIR --benchmark=vqav2 --data_dir=DIR \
      --shots=0,4,8,16,32 --trials=3

The model comes from a `flamingo_jax.save` directory (with its config, or with --config's,
which must have the same parameter shapes), its parameters sharded over the config's mesh (all
devices of all hosts, with --multihost on each host; --mesh overrides its sizes) as training
places them, the frozen ones in --frozen_dtype; each batch's queries are split over the mesh's
batch axes. Prints a table of the benchmark's metrics per number of shots (with --trials, the
mean and standard deviation over the seeds --seed, --seed + 1, ...) and writes them, with every
prediction, to --output as JSON. Predictions are also appended to --output's `.partial.jsonl`
as each batch finishes: a run stopped half-way and started again with the same flags resumes
where it stopped. Without --checkpoint the model has random weights (a dry run of the
pipeline). Text goes through --vocabulary, else the checkpoint's `tokenizer.json` when it has
one, else the config's vocabulary (`config.data.vocabulary`). An IDEFICS checkpoint
(`checkpoints.convert --from idefics`) takes --style=idefics: its own prompts and decoding.
"""

import dataclasses
import json
import pathlib
from typing import Any

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import app, flags  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags
import numpy as np

from flamingo_jax import distributed, sharding
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.data import tokenizer
from flamingo_jax.evaluation import harness, metrics
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
flags.DEFINE_enum("style", "open_flamingo", sorted(harness.STYLES),
                  "Prompt formats (idefics: an IDEFICS checkpoint's prompts and decoding).")
flags.DEFINE_enum("selection", "random", ["random", "rices"], "How support examples are picked.")
flags.DEFINE_integer("batch_size", 8, "Queries per batch.")
flags.DEFINE_integer("num_samples", 0, "Queries to evaluate, a seeded subset (0: all).")
flags.DEFINE_integer("beam_size", 3, "Beams for captions and answers (1: greedy).")
flags.DEFINE_integer("seed", 0, "Seed of the subset and of random support examples.")
flags.DEFINE_integer("trials", 1, "Runs with the seeds seed, seed + 1, ...: the table gives "
                     "their mean and standard deviation, as the papers report.")
flags.DEFINE_float("media_cache_gib", 4.0, "Visual tokens kept per host for media seen again.")
flags.DEFINE_string("features_dir", "", "A folder where the support split's RICES features are "
                    "kept for later runs (default: this run only).")
flags.DEFINE_enum("vqa_rule", "server", list(metrics.VQA_RULES),
                  "VQA accuracy: the evaluation server's or OpenFlamingo's normalisation.")
flags.DEFINE_float("frames_fps", 3.0, "Rate the video benchmarks' frames were extracted at.")
flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes of the device mesh (-1: the devices "
                  "left; default: the config's mesh).")
flags.DEFINE_string("frozen_dtype", None, "dtype of the frozen parameters, e.g. bfloat16 "
                    "(default: the config's train.frozen_dtype, which config.precision sets).")
flags.mark_flags_as_required(["benchmark", "data_dir"])


def output_path() -> pathlib.Path:
  return pathlib.Path(FLAGS.output or f"eval_{FLAGS.benchmark}.json")


class PartialPredictions:
  """The predictions of an unfinished run, a JSON line each ({"shots", "seed", "id",
  "prediction"}) after a first line naming the run; written by host 0 as batches finish and
  read back by a run of the same name, which then skips what is done."""

  def __init__(self, path: pathlib.Path, run: dict):
    self.path, self.done = path, {}
    lines = path.read_text().splitlines() if path.exists() else []
    if lines and json.loads(lines[0]) == run:
      for line in lines[1:]:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # The line being written when the run stopped.
          break
        self.done.setdefault((record["shots"], record["seed"]), {})[record["id"]] = (
            record["prediction"])
    elif jax.process_index() == 0:
      path.write_text(json.dumps(run) + "\n")

  def of(self, shots: int, seed: int) -> dict[str, Any]:
    return self.done.get((shots, seed), {})

  def writer(self, shots: int, seed: int):
    def write(predictions: dict[str, Any]) -> None:
      if jax.process_index() == 0:
        with self.path.open("a") as f:
          f.writelines(json.dumps({"shots": shots, "seed": seed, "id": key, "prediction": value})
                       + "\n" for key, value in predictions.items())
    return write


def summary(trials: list[dict]) -> dict:
  """{"metrics": mean over the trials, "std": their standard deviation, "trials": [{"seed",
  "metrics", "predictions", "support"}]}."""
  names = list(trials[0]["metrics"])
  values = {n: [t["metrics"][n] for t in trials] for n in names}
  return {"metrics": {n: float(np.mean(v)) for n, v in values.items()},
          "std": {n: float(np.std(v)) for n, v in values.items()}, "trials": trials}


def main(argv):
  del argv
  distributed.initialize()
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
      frames_fps=FLAGS.frames_fps, seed=FLAGS.seed, media_cache_gib=FLAGS.media_cache_gib,
      features_dir=FLAGS.features_dir)
  evaluation = harness.Evaluation(model, params, config, vocabulary, FLAGS.benchmark,
                                  FLAGS.data_dir, settings)
  output = output_path()
  run = {"benchmark": FLAGS.benchmark, "checkpoint": FLAGS.checkpoint,
         "data_dir": FLAGS.data_dir, "settings": dataclasses.asdict(settings)}
  partial = PartialPredictions(output.with_suffix(".partial.jsonl"), run)
  results = {}
  for shots in map(int, FLAGS.shots):
    seeds = range(FLAGS.seed, FLAGS.seed + FLAGS.trials)
    results[shots] = summary([
        {"seed": seed, **evaluation.run(shots, seed, partial.of(shots, seed),
                                        partial.writer(shots, seed))} for seed in seeds])
  if jax.process_index() != 0:
    return
  names = list(results[int(FLAGS.shots[0])]["metrics"])
  print(f"| {FLAGS.benchmark} shots | " + " | ".join(names) + " |")
  print("| --- " * (len(names) + 1) + "|")
  for shots, result in results.items():
    cells = [f"{100 * result['metrics'][n]:.2f}" + (
        f" ± {100 * result['std'][n]:.2f}" if FLAGS.trials > 1 else "") for n in names]
    print(f"| {shots} | " + " | ".join(cells) + " |")
  output.write_text(json.dumps({**run, "trials": FLAGS.trials, "results": results}, indent=2))
  partial.path.unlink()
  print(f"Wrote {output}.")


if __name__ == "__main__":
  console.run(main, lambda: output_path().with_suffix(".log"))
