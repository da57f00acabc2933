"""Few-shot evaluation of a Flamingo model on one benchmark (flamingo_jax.evaluation.benchmarks).

The harness orchestrates: for every query of the evaluation split it picks N support examples
from the support split (random, or RICES; an episodic benchmark's queries bring their own:
binding.py), builds the prompt (prompts.py), batches prompts and media, hands each batch to the
evaluator of the benchmark's kind, and scores the predictions with the benchmark's metric.
- captioning, VQA, video QA, binding: generation.py, beam search until `<EOC>` (OpenFlamingo's
  settings by default: 3 beams, 20 new tokens for captions, 5 for answers);
- classification: scoring.py, the log-likelihood of every class name, averaged over orders of
  the shots (the paper ensembles 6), made a prediction as the benchmark says
  (`Benchmark.prediction`).
Zero shots is the paper's zero-shot mode: two text-only support examples.

`Settings.for_style` gives a style's settings: "paper" adds the paper's permutation ensemble
and its video clips (30 frames at 3 FPS) to its prompts.
"""

import collections
import dataclasses
import functools
import math
from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio

from flamingo_jax.data import media as media_lib
from flamingo_jax.decode import encode, left_pad
from flamingo_jax.evaluation import binding, generation, prompts, rices, scoring
from flamingo_jax.evaluation.benchmarks import BENCHMARKS, Benchmark
from flamingo_jax.evaluation.datasets import Example

# images float32 [B, M, T, S, S, 3], tokens and positions int32 [B, L] -> B predictions (or,
# close-ended, class log-likelihoods [B, C]).
Evaluator = Callable[[np.ndarray, np.ndarray, np.ndarray], list[Any] | np.ndarray]


FRAME_SAMPLINGS = ("spread", "rate")


@dataclasses.dataclass(frozen=True)
class Settings:
  """style: prompt formats, "open_flamingo" or "paper"; selection: "random" or "rices";
  num_samples: queries to evaluate, a seeded random subset (0: all); max_new_tokens: 0 for the
  task's default; candidate_chunk: class names scored per call; permutations: orders of the
  shots whose class log-likelihoods a close-ended prediction averages (at most shots!, the
  chosen order first); vqa_rule: `metrics.VQA_RULES`.
  Video: frame_sampling "spread" takes num_frames spread evenly over the video's frames; "rate"
  its centre clip of num_frames at clip_fps, its frames being extracted at frames_fps
  (`MediaLoader.clip_at_rate`).

  The defaults are the OpenFlamingo style's; `for_style` gives a style's own."""
  style: str = "open_flamingo"
  selection: str = "random"
  batch_size: int = 8
  num_samples: int = 0
  max_new_tokens: int = 0
  beam_size: int = 3
  length_penalty: float = 0.0
  candidate_chunk: int = 128
  permutations: int = 1
  frame_sampling: str = "spread"
  num_frames: int = 8
  clip_fps: float = 3.0
  frames_fps: float = 3.0
  vqa_rule: str = "server"
  seed: int = 0

  @classmethod
  def for_style(cls, style: str, **overrides) -> "Settings":
    """The settings of a prompt style, then `overrides`. "paper", as the paper evaluates:
    close-ended scores ensembled over 6 orders of the shots, and video clips of 30 frames at
    3 FPS (the resampler's temporal embeddings, trained on 8 frames at 1 FPS, interpolated)."""
    if style not in prompts.FORMATS:
      raise ValueError(f"Unknown prompt style {style!r}; choose from {sorted(prompts.FORMATS)}.")
    paper = dict(permutations=6, frame_sampling="rate", num_frames=30, clip_fps=3.0)
    return cls(style=style, **{**(paper if style == "paper" else {}), **overrides})


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


def shot_orders(count: int, permutations: int, rng: np.random.Generator) -> list[tuple]:
  """min(permutations, count!) distinct orders of `count` shots, as index tuples: the order
  given first, then random ones."""
  orders = [tuple(range(count))]
  while len(orders) < min(permutations, math.factorial(count)):
    order = tuple(int(i) for i in rng.permutation(count))
    if order not in orders:
      orders.append(order)
  return orders


def evaluator(model, params, config: ml_collections.ConfigDict, vocabulary: seqio.Vocabulary,
              benchmark: Benchmark, format_: prompts.Format, classes, settings: Settings
              ) -> Evaluator:
  """The evaluator of the benchmark's kind, with its settings: close-ended scoring for
  classification (its class log-likelihoods [B, C]), generation for every other task."""
  if benchmark.task == "classification":
    predict = lambda visual, tokens, positions: scoring.class_log_likelihoods(
        model, params, visual, tokens, positions, classes, format_, vocabulary,
        settings.candidate_chunk)
  else:
    predict = functools.partial(
        generation.generate_answers, model, params, task=benchmark.task, vocabulary=vocabulary,
        stop_token=int(config.model.eoc_token_id),
        max_new_tokens=settings.max_new_tokens or generation.MAX_NEW_TOKENS[benchmark.task],
        beam_size=settings.beam_size, length_penalty=settings.length_penalty)
  return lambda images, tokens, positions: predict(
      encode(model, params, jnp.asarray(images)), jnp.asarray(tokens), jnp.asarray(positions))


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
  if settings.frame_sampling not in FRAME_SAMPLINGS:
    raise ValueError(f"Unknown frame sampling {settings.frame_sampling!r}; choose from "
                     f"{FRAME_SAMPLINGS}.")
  loader = media_lib.MediaLoader(config.model)

  def load(example: Example) -> np.ndarray:
    """float32 [T, S, S, 3]: a clip's frames, or the image."""
    if not video:
      return loader.images(example.image_paths)
    if settings.frame_sampling == "spread":
      return loader.clip(example.image_paths, settings.num_frames)
    return loader.clip_at_rate(example.image_paths, settings.frames_fps, settings.clip_fps,
                               settings.num_frames)

  def features(examples):
    return np.concatenate([np.asarray(rices.pooled_features(
        model, params, jnp.asarray(loader.images([e.image_paths[0] for e in examples[i:i + 64]]))))
        for i in range(0, len(examples), 64)])

  chosen = select_support(settings, shots, queries, support, features, rng, episodic)
  predict = evaluator(model, params, config, vocabulary, benchmark, format_, classes, settings)
  close_ended = benchmark.task == "classification"
  orders = shot_orders(chosen.shape[1], settings.permutations if close_ended else 1, rng)
  text_only = shots == 0

  def inputs(batch: list[Example], rows: np.ndarray, order: tuple):
    """The batch's left-padded prompts (tokens, positions int32 [B, L]) and media [B, M, ...],
    each query's shots in `order`."""
    prompt_list, media = [], []
    for query, indices in zip(batch, rows):
      shown = [support[indices[k]] for k in order]
      prompt_list.append(prompts.prompt_tokens(
          format_, [(s.question, support_answer(classes, s)) for s in shown],
          query.question, vocabulary, text_only_support=text_only))
      media.append(np.stack(([] if text_only else [load(s) for s in shown]) + [load(query)]))
    # A short last batch repeats its last query, so that every batch has one shape.
    filler = settings.batch_size - len(batch)
    prompt_list += [prompt_list[-1]] * filler
    media += [media[-1]] * filler
    tokens, positions = left_pad(prompt_list, length=bucket(max(map(len, prompt_list))))
    return np.stack(media), tokens, positions

  predictions = {}
  for start in range(0, len(queries), settings.batch_size):
    batch = queries[start:start + settings.batch_size]
    rows = chosen[start:start + settings.batch_size]
    if close_ended:
      scores = np.mean([predict(*inputs(batch, rows, order)) for order in orders], axis=0)
      outputs = [benchmark.prediction(row) for row in scores]
    else:
      outputs = predict(*inputs(batch, rows, orders[0]))
    for query, prediction in zip(batch, outputs):
      predictions[query.id] = prediction
  metric = (functools.partial(benchmark.metric, rule=settings.vqa_rule)
            if benchmark.task == "vqa" else benchmark.metric)
  return {"metrics": metric(predictions, queries), "predictions": predictions}
