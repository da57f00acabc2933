"""`make demo`: the whole of Flamingo in miniature, offline, on a CPU, in minutes.

  python -m flamingo_jax.demo [--config=configs/demo.py] [--workdir=demo_workdir]

Every stage goes through the library's own public paths, and leaves its result in the work
directory, so a second run skips what is done (and an interrupted training resumes):
1. tokenizer/: a BPE SentencePiece vocabulary of the synthetic text (`config.tokenizer`), in
   which every word is one token;
2. lm/: pretrain a small LM on the synthetic source's text (flamingo_jax.train.lm_pretraining: the
   mixture's token streams without their pixels), then freeze it. With `config.pretrained_lm`
   (configs/demo_smollm2.py) stages 1 and 2 import a pretrained LM and its tokenizer instead;
3. vision/: pretrain the vision tower contrastively on synthetic image-caption pairs with the
   paper's two-term loss (flamingo_jax.train.contrastive), then freeze it;
4. flamingo/: train the resampler and gated cross-attention on the loss-weighted mixture of
   interleaved documents, pairs, VQA and novel-word binding documents, on both frozen towers;
5. evaluate with the few-shot harness at 0, 4 and 8 shots on held-out synthetic benchmarks:
   captioning (CIDEr), VQA (VQA accuracy), and novel-word binding (accuracy), whose made-up
   words exist only in each episode's support examples;
6. results.json, results.png (scores against shots, training curves) and a printed table.
"""

import json
import pathlib
import time

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import flags  # pylint: disable=g-import-not-at-top
import jax
from ml_collections import config_flags
import orbax.checkpoint as ocp
import tqdm

from flamingo_jax import configs
from flamingo_jax.checkpoints import lm_sources, orbax_io
from flamingo_jax.data import synthetic
from flamingo_jax.data import tokenizer
from flamingo_jax.evaluation import harness
from flamingo_jax.evaluation import synthetic as synthetic_benchmarks
from flamingo_jax.flamingo.factory import create
from flamingo_jax.train import contrastive, lm_pretraining, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(configs.CONFIG_DIR / "demo.py"), "Demo config file (default: the package's).")
_WORKDIR = flags.DEFINE_string("workdir", "demo_workdir", "Where every stage leaves its results.")

BENCHMARK_METRICS = {"synthetic_caption": "CIDEr", "synthetic_vqa": "accuracy",
                     "synthetic_binding": "accuracy"}


def log_path() -> pathlib.Path:
  return pathlib.Path(_WORKDIR.value).resolve() / "demo.log"


def metrics_history(workdir: pathlib.Path) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def vocabulary_path(config, directory: pathlib.Path) -> str:
  """Stage 1: trains (or finds) the SentencePiece model of the synthetic text."""
  path = directory / "spm.model"
  if not path.exists():
    print("== 1/5 training the tokenizer on the synthetic text", flush=True)
    c, data = config.tokenizer, config.data.synthetic
    tokenizer.train_sentencepiece(
        synthetic.corpus(data.seed, c.num_examples, ways=data.ways, shots=data.shots,
                         name_colours=data.get("name_colours", False)),
        c.vocab_size, path)
  return str(path)


def imported_lm(config, directory: pathlib.Path):
  """Stages 1-2 with a pretrained LM (`config.pretrained_lm`: {format, path}, an
  `lm_sources.SOURCES` format): its checkpoint becomes a Flamingo one with its tokenizer, which
  becomes the data's vocabulary. Returns (config with the LM's own model.lm, LM parameters)."""
  source = config.pretrained_lm
  if not (directory / orbax_io.CONFIG_FILE).exists():
    print(f"== 1-2/5 importing the pretrained LM ({source.path}) and its tokenizer", flush=True)
    lm_sources.convert_lm(lm_sources.SOURCES[source.format](source.path), config, directory)
  _, params, saved = orbax_io.load(directory)
  config = lm_sources.with_lm(config, saved.model.lm.to_dict())
  config.data.vocabulary = str(directory / tokenizer.TOKENIZER_FILE)
  return config, params["lm"]


def pretrained(workdir: pathlib.Path, description: str, train_fn):
  """Runs (or skips) a pretraining stage `train_fn() -> (params, history)`, keeping
  its parameters (orbax) and history in `workdir`; returns the parameters."""
  path = (workdir / "params").resolve()
  # The checkpointer writes in the background: the directory must exist before the history
  # goes in beside its parameters.
  workdir.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    if not path.exists():
      print(f"== {description}", flush=True)
      params, history = train_fn()
      checkpointer.save(path, params)
      (workdir / "history.json").write_text(json.dumps(history))
    return checkpointer.restore(path)


def frozen_towers(config, lm_params, vision_params, directory: pathlib.Path) -> pathlib.Path:
  """A `flamingo_jax.save` checkpoint of the pretrained LM and vision tower, with a freshly
  initialised bridge: the frozen source of stage 4."""
  if not (directory / orbax_io.CONFIG_FILE).exists():
    _, params = create(config, jax.random.key(config.seed))
    params = dict(params, lm=lm_params, vision_encoder=vision_params)
    orbax_io.save(directory, params, config)
  return directory


def train_flamingo(config, frozen: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
  """Stage 4: the train loop on the frozen towers (resumes, or skips when exported)."""
  export = workdir / "export"
  if not (export / orbax_io.CONFIG_FILE).exists():
    print("== 4/5 training Flamingo on the loss-weighted synthetic mixture", flush=True)
    config = config.copy_and_resolve_references()
    config.train.frozen.source, config.train.frozen.path = "checkpoint", str(frozen)
    trainer.train(config, str(workdir))
    trainer.export(config, str(workdir), str(export))
  return export


def evaluate(config, checkpoint: pathlib.Path, workdir: pathlib.Path) -> dict:
  """Stage 5: {benchmark: {shots: metrics}}, cached in workdir/evaluation.json."""
  output = workdir / "evaluation.json"
  if output.exists():
    return json.loads(output.read_text())
  print("== 5/5 few-shot evaluation on held-out synthetic benchmarks", flush=True)
  e = config.demo.eval
  model, params, _ = orbax_io.load(checkpoint, config)
  vocabulary = tokenizer.make_vocabulary(config.data.vocabulary)
  data_dirs = synthetic_benchmarks.write_benchmarks(
      str(workdir / "benchmarks"), config.model.vision.image_size, num_queries=e.num_queries,
      num_support=e.num_support, max_shots=max(e.shots),
      name_colours=config.data.synthetic.get("name_colours", False))
  results = {}
  with tqdm.tqdm(total=len(data_dirs) * len(e.shots), desc="evaluate") as progress:
    for name, data_dir in data_dirs.items():
      settings = harness.Settings.for_style("paper", batch_size=e.batch_size,
                                            beam_size=e.beam_size,
                                            max_new_tokens=e.max_new_tokens[name])
      # One Evaluation a benchmark: its files read and its images encoded once for all shots.
      evaluation = harness.Evaluation(model, params, config, vocabulary, name, data_dir,
                                      settings)
      for shots in e.shots:
        results.setdefault(name, {})[str(shots)] = evaluation.run(shots, config.seed)["metrics"]
        progress.update(1)
  output.write_text(json.dumps(results, indent=2))
  return results


def table(results: dict) -> str:
  shots = list(next(iter(results.values())))
  lines = ["| benchmark | metric | " + " | ".join(f"{s} shots" for s in shots) + " |",
           "| --- " * (len(shots) + 2) + "|"]
  for name, by_shots in results.items():
    metric = BENCHMARK_METRICS[name]
    lines.append(f"| {name} | {metric} | "
                 + " | ".join(f"{100 * by_shots[s][metric]:.1f}" for s in shots) + " |")
  return "\n".join(lines)


def plot(results: dict, curves: dict[str, list[dict]], path: pathlib.Path) -> None:
  """Scores against shots, and the three stages' training curves."""
  # Imported here, headless: only this function draws.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (scores, losses) = plt.subplots(1, 2, figsize=(11, 4))
  for name, by_shots in results.items():
    metric = BENCHMARK_METRICS[name]
    shots = [int(s) for s in by_shots]
    scores.plot(shots, [100 * by_shots[str(s)][metric] for s in shots], "o-",
                label=f"{name} ({metric})")
  scores.set(xlabel="shots", ylabel="score", title="Few-shot, held-out synthetic tasks",
             xticks=shots)
  scores.legend()
  for name, history in curves.items():
    losses.plot([h["step"] for h in history], [h["loss"] for h in history], label=name)
  losses.set(xlabel="step", ylabel="training loss", yscale="log", title="Training")
  losses.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  if config.get("pretrained_lm"):
    config, lm_params = imported_lm(config, workdir / "lm")
  else:
    config.data.vocabulary = vocabulary_path(config, workdir / "tokenizer")
    lm_params = pretrained(workdir / "lm", "2/5 pretraining the LM on the synthetic text",
                           lambda: lm_pretraining.train(config))
  towers = pretrained(workdir / "vision", "3/5 contrastive pretraining of the vision tower",
                      lambda: contrastive.train(config))
  frozen = frozen_towers(config, lm_params, towers["vision_encoder"], workdir / "frozen")
  flamingo = train_flamingo(config, frozen, workdir / "flamingo")
  results = evaluate(config, flamingo, workdir)
  histories = {"LM": workdir / "lm" / "history.json",  # None with a pretrained LM.
               "contrastive": workdir / "vision" / "history.json"}
  curves = {name: json.loads(path.read_text()) for name, path in histories.items()
            if path.exists()}
  curves["Flamingo"] = metrics_history(workdir / "flamingo")
  (workdir / "results.json").write_text(json.dumps(
      {"evaluation": results, "training": curves}, indent=2))
  plot(results, curves, workdir / "results.png")
  print(table(results))
  print(f"Done in {time.perf_counter() - start:.0f} s. Results: {workdir / 'results.json'}, "
        f"{workdir / 'results.png'}; the trained model: {flamingo} (flamingo_jax.load).")
  if not console.verbose():
    print(f"The libraries' logs: {log_path()} (--verbose prints them here).")


if __name__ == "__main__":
  console.run(main, log_path)
