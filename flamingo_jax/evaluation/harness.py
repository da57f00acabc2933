"""Few-shot evaluation of a Flamingo model on one benchmark (flamingo_jax.evaluation.benchmarks).

The harness orchestrates: for every query of the evaluation split it picks N support examples
from the support split (random, or RICES; an episodic benchmark's queries bring their own:
binding.py), builds the prompt (prompts.py), batches prompts and media, hands each batch to the
evaluator of the benchmark's kind, and scores the predictions with the benchmark's metric.
- captioning, VQA, video QA, binding: generation.py, beam search until `<EOC>` (OpenFlamingo's
  settings by default: 3 beams, 20 new tokens for captions, 5 for answers);
- classification: scoring.py, the log-likelihood of every class name, made a prediction as the
  benchmark says (`Benchmark.prediction`).
Zero shots is the paper's zero-shot mode: two text-only support examples.
"""

import collections
import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio

from flamingo_jax.data import media as media_lib
from flamingo_jax.decode import left_pad
from flamingo_jax.evaluation import binding, generation, prompts, rices, scoring
from flamingo_jax.evaluation.benchmarks import BENCHMARKS, Benchmark
from flamingo_jax.evaluation.datasets import Example

# images float32 [B, M, T, S, S, 3], tokens and positions int32 [B, L] -> B predictions.
Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray], list[Any]]


@dataclasses.dataclass(frozen=True)
class Settings:
  """style: prompt formats, "open_flamingo" or "paper"; selection: "random" or "rices";
  num_samples: queries to evaluate, a seeded random subset (0: all); max_new_tokens: 0 for the
  task's default; candidate_chunk: class names scored per call; num_frames: frames per clip,
  spread evenly over the video's frames."""
  style: str = "open_flamingo"
  selection: str = "random"
  batch_size: int = 8
  num_samples: int = 0
  max_new_tokens: int = 0
  beam_size: int = 3
  length_penalty: float = 0.0
  candidate_chunk: int = 128
  num_frames: int = 8
  seed: int = 0


def support_answer(classes, example: Example) -> str:
  """The text a support example shows: its class name, or its most common answer (a caption's
  first reference)."""
  if classes is not None:
    return classes[example.label]
  return collections.Counter(example.answers).most_common(1)[0][0]


def bucket(length: int, multiple: int = 16) -> int:
  """Prompt lengths round up to a multiple, so that few shapes compile."""
  return -(-length // multiple) * multiple


def select_support(settings: Settings, shots: int, queries: list[Example], support: list[Example],
                   features, rng: np.random.Generator, episodic: bool = False) -> np.ndarray:
  """Support indices [Q, n]: zero shots take two random text-only examples (for an episodic
  benchmark, from any episode: their words say nothing about the query's)."""
  if shots == 0:
    return rices.random_support(len(queries), len(support), prompts.ZERO_SHOT_TEXT_EXAMPLES, rng)
  if episodic:
    return binding.episode_support(queries, shots)
  if settings.selection == "rices":
    return rices.rices(features(queries), features(support), shots)
  if settings.selection != "random":
    raise ValueError(f"Unknown support selection {settings.selection!r}: random or rices.")
  return rices.random_support(len(queries), len(support), shots, rng)


def evaluator(model, params, config: ml_collections.ConfigDict, vocabulary: seqio.Vocabulary,
              benchmark: Benchmark, format_: prompts.Format, classes, settings: Settings
              ) -> Evaluator:
  """The evaluator of the benchmark's kind, with its settings: close-ended scoring for
  classification, generation for every other task."""
  if benchmark.task == "classification":
    return functools.partial(scoring.classify, model, params, classes=classes, format_=format_,
                             vocabulary=vocabulary, chunk=settings.candidate_chunk,
                             prediction=benchmark.prediction)
  return functools.partial(
      generation.generate_answers, model, params, task=benchmark.task, vocabulary=vocabulary,
      stop_token=int(config.model.eoc_token_id),
      max_new_tokens=settings.max_new_tokens or generation.MAX_NEW_TOKENS[benchmark.task],
      beam_size=settings.beam_size, length_penalty=settings.length_penalty)


def evaluate(model, params, config: ml_collections.ConfigDict, vocabulary: seqio.Vocabulary,
             name: str, data_dir: str, shots: int, settings: Settings = Settings()) -> dict:
  """{"metrics": {name: value}, "predictions": {example id: prediction}} of benchmark `name`
  with `shots` support examples per query."""
  benchmark = BENCHMARKS[name]
  queries = benchmark.read(data_dir, benchmark.eval_split)
  rng = np.random.default_rng(settings.seed)
  if settings.num_samples and settings.num_samples < len(queries):
    queries = [queries[i] for i in sorted(rng.choice(len(queries), settings.num_samples,
                                                     replace=False))]
  episodic = benchmark.support_split is None
  support = (binding.episode_pool(queries) if episodic
             else benchmark.read(data_dir, benchmark.support_split))
  classes = benchmark.classes(data_dir) if benchmark.classes else None
  style = prompts.FORMATS[settings.style]
  format_ = style[name] if name in style else style[benchmark.task]
  video = benchmark.task == "video_vqa"
  if settings.selection == "rices" and video:
    raise ValueError("RICES retrieves by image features; use random support for video.")
  loader = media_lib.MediaLoader(config.model)

  def load(example: Example) -> np.ndarray:
    """float32 [T, S, S, 3]: a clip's frames, or the image."""
    if video:
      return loader.clip(example.image_paths, settings.num_frames)
    return loader.images(example.image_paths)

  def features(examples):
    return np.concatenate([np.asarray(rices.pooled_features(
        model, params, jnp.asarray(loader.images([e.image_paths[0] for e in examples[i:i + 64]]))))
        for i in range(0, len(examples), 64)])

  chosen = select_support(settings, shots, queries, support, features, rng, episodic)
  predict = evaluator(model, params, config, vocabulary, benchmark, format_, classes, settings)
  text_only = shots == 0
  predictions = {}
  for start in range(0, len(queries), settings.batch_size):
    batch = queries[start:start + settings.batch_size]
    prompt_list, media = [], []
    for query, indices in zip(batch, chosen[start:start + settings.batch_size]):
      shown = [support[i] for i in indices]
      prompt_list.append(prompts.prompt_tokens(
          format_, [(s.question, support_answer(classes, s)) for s in shown],
          query.question, vocabulary, text_only_support=text_only))
      media.append(np.stack(([] if text_only else [load(s) for s in shown]) + [load(query)]))
    # A short last batch repeats its last query, so that every batch has one shape.
    filler = settings.batch_size - len(batch)
    prompt_list += [prompt_list[-1]] * filler
    media += [media[-1]] * filler
    tokens, positions = left_pad(prompt_list, length=bucket(max(map(len, prompt_list))))
    for query, prediction in zip(batch, predict(np.stack(media), tokens, positions)):
      predictions[query.id] = prediction
  return {"metrics": benchmark.metric(predictions, queries), "predictions": predictions}
