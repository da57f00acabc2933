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

An `Evaluation` reads a benchmark once and runs it at any number of shots and seeds; it encodes
each distinct medium once (media_cache.py) and computes RICES features once (and keeps the
support split's on disk, `Settings.features_dir`). It runs on the mesh the parameters live on,
one host or many (placement.py): each batch's queries split over the mesh's batch axes and
across hosts, the predictions gathered on every host, the metrics computed on host 0. A run can
skip the batches an earlier, interrupted run finished (`done`) and hands each batch's
predictions to `on_batch` as they come, which is how the CLI resumes.

`Settings.for_style` gives a style's settings: "paper" adds the paper's permutation ensemble
and its video clips (30 frames at 3 FPS) to its prompts; "idefics" prompts, decodes and reads
answers as IDEFICS's evaluation does (idefics_prompts.py: captioning and VQA).
"""

import collections
import dataclasses
import functools
import math
import pathlib
import types
from typing import Any, Callable, Mapping

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import seqio
import tqdm

from flamingo_jax import sharding
from flamingo_jax.data import media as media_lib
from flamingo_jax.decode import encode, left_pad
from flamingo_jax.evaluation import (binding, generation, idefics_prompts, media_cache, placement,
                                     prompts, rices, scoring)
from flamingo_jax.evaluation.benchmarks import BENCHMARKS, Benchmark
from flamingo_jax.evaluation.datasets import Example

# visual tokens [B, M, R, D], tokens and positions int32 [B, L] (global arrays) -> B
# predictions (or, close-ended, class log-likelihoods [B, C]), on every host.
Evaluator = Callable[[jax.Array, jax.Array, jax.Array], list[Any] | np.ndarray]


FRAME_SAMPLINGS = ("spread", "rate")
STYLES = (*prompts.FORMATS, "idefics")


@dataclasses.dataclass(frozen=True)
class Settings:
  """style: prompt formats, one of STYLES; selection: "random" or "rices";
  num_samples: queries to evaluate, a seeded random subset (0: all); max_new_tokens: 0 for the
  task's default; zero_shot_examples: text-only support examples of a zero-shot prompt;
  candidate_chunk: class names scored per call; permutations: orders of the
  shots whose class log-likelihoods a close-ended prediction averages (at most shots!, the
  chosen order first); vqa_rule: `metrics.VQA_RULES`.
  Video: frame_sampling "spread" takes num_frames spread evenly over the video's frames; "rate"
  its centre clip of num_frames at clip_fps, its frames being extracted at frames_fps
  (`MediaLoader.clip_at_rate`).
  media_cache_gib: the most visual tokens kept for media seen again, per host; features_dir: a
  folder where the support split's RICES features are kept for later runs ("": this run only).

  The defaults are the OpenFlamingo style's; `for_style` gives a style's own."""
  style: str = "open_flamingo"
  selection: str = "random"
  batch_size: int = 8
  num_samples: int = 0
  max_new_tokens: int = 0
  beam_size: int = 3
  length_penalty: float = 0.0
  zero_shot_examples: int = prompts.ZERO_SHOT_TEXT_EXAMPLES
  candidate_chunk: int = 128
  permutations: int = 1
  frame_sampling: str = "spread"
  num_frames: int = 8
  clip_fps: float = 3.0
  frames_fps: float = 3.0
  vqa_rule: str = "server"
  seed: int = 0
  media_cache_gib: float = 4.0
  features_dir: str = ""

  @classmethod
  def for_style(cls, style: str, **overrides) -> "Settings":
    """The settings of a prompt style, then `overrides`. "paper", as the paper evaluates:
    close-ended scores ensembled over 6 orders of the shots, and video clips of 30 frames at
    3 FPS (the resampler's temporal embeddings, trained on 8 frames at 1 FPS, interpolated).
    "idefics", as IDEFICS's evaluation generates (idefics_prompts.py), with no zero-shot
    support examples."""
    own = {"paper": dict(permutations=6, frame_sampling="rate", num_frames=30, clip_fps=3.0),
           "idefics": dict(beam_size=idefics_prompts.BEAM_SIZE,
                           max_new_tokens=idefics_prompts.MAX_NEW_TOKENS,
                           length_penalty=idefics_prompts.LENGTH_PENALTY, zero_shot_examples=0)}
    if style not in STYLES:
      raise ValueError(f"Unknown prompt style {style!r}; choose from {sorted(STYLES)}.")
    return cls(style=style, **{**own.get(style, {}), **overrides})


def support_answer(classes, example: Example) -> str:
  """The text a support example shows: its class name, or its most common answer (a caption's
  first reference)."""
  if classes is not None:
    return classes[example.label]
  return collections.Counter(example.answers).most_common(1)[0][0]


def bucket(length: int, multiple: int = 16) -> int:
  """A run's prompt length, rounded up to a multiple (shapes the hardware tiles well)."""
  return -(-length // multiple) * multiple


def select_support(settings: Settings, shots: int, queries: list[Example], support: list[Example],
                   rices_features, rng: np.random.Generator, episodic: bool = False) -> np.ndarray:
  """Support indices [Q, n]: zero shots take `settings.zero_shot_examples` random text-only
  examples (for an episodic benchmark, from any episode: their words say nothing about the
  query's). `rices_features()` -> the queries' and the support's RICES features ([Q, C],
  [N, C]), asked for only by RICES."""
  if shots == 0:
    return rices.random_support(len(queries), len(support), settings.zero_shot_examples, rng)
  if episodic:
    return binding.episode_support(queries, shots)
  if settings.selection == "rices":
    return rices.rices(*rices_features(), shots)
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


def idefics_template(benchmark: Benchmark, vocabulary: seqio.Vocabulary,
                     config: ml_collections.ConfigDict) -> idefics_prompts.Template:
  """The IDEFICS prompt template of the benchmark's task, once the vocabulary is checked to be
  an IDEFICS checkpoint's."""
  if benchmark.task not in idefics_prompts.TEMPLATES:
    raise ValueError(f"The idefics style has prompts for {sorted(idefics_prompts.TEMPLATES)}, "
                     f"not {benchmark.task}.")
  idefics_prompts.check_vocabulary(vocabulary, int(config.model.media_token_id))
  return idefics_prompts.TEMPLATES[benchmark.task]


def evaluator(model, params, config: ml_collections.ConfigDict, vocabulary: seqio.Vocabulary,
              benchmark: Benchmark, format_: prompts.Format | idefics_prompts.Template,
              classes, settings: Settings, batch: placement.Placement) -> Evaluator:
  """The evaluator of the benchmark's kind, with its settings: close-ended scoring for
  classification (its class log-likelihoods [B, C]), generation for every other task, its
  answers read as the style reads them."""
  if benchmark.task == "classification":
    return lambda visual, tokens, positions: scoring.class_log_likelihoods(
        model, params, visual, tokens, positions, classes, format_, vocabulary,
        settings.candidate_chunk, batch.replicate)
  if isinstance(format_, idefics_prompts.Template):
    answer, banned = format_.answer, idefics_prompts.banned_sequences(vocabulary)
  else:
    answer, banned = functools.partial(prompts.postprocess, kind=benchmark.task), ()
  return functools.partial(
      generation.generate_answers, model, params, answer=answer, banned=banned,
      vocabulary=vocabulary, stop_token=int(config.model.eoc_token_id),
      max_new_tokens=settings.max_new_tokens or generation.MAX_NEW_TOKENS[benchmark.task],
      beam_size=settings.beam_size, length_penalty=settings.length_penalty)


class Evaluation:
  """Benchmark `name` of `data_dir` for a model whose `params` live on a mesh (or one device),
  read once; `run(shots, seed)` evaluates it."""

  def __init__(self, model, params, config: ml_collections.ConfigDict,
               vocabulary: seqio.Vocabulary, name: str, data_dir: str,
               settings: Settings = Settings()):
    self.model, self.params, self.vocabulary = model, params, vocabulary
    self.name, self.settings = name, settings
    self.benchmark = benchmark = BENCHMARKS[name]
    self.video = benchmark.task == "video_vqa"
    if settings.selection == "rices" and self.video:
      raise ValueError("RICES retrieves by image features; use random support for video.")
    if settings.frame_sampling not in FRAME_SAMPLINGS:
      raise ValueError(f"Unknown frame sampling {settings.frame_sampling!r}; choose from "
                       f"{FRAME_SAMPLINGS}.")
    self.queries = benchmark.read(data_dir, benchmark.eval_split)
    self.episodic = benchmark.support_split is None
    self.support = (None if self.episodic
                    else benchmark.read(data_dir, benchmark.support_split))
    self.classes = benchmark.classes(data_dir) if benchmark.classes else None
    if settings.style == "idefics":
      self.format = idefics_template(benchmark, vocabulary, config)
    else:
      style = prompts.FORMATS[settings.style]
      self.format = style[name] if name in style else style[benchmark.task]
    self.loader = media_lib.MediaLoader(config.model)
    self.batch = placement.Placement(sharding.params_mesh(params), sharding.rules(config),
                                     settings.batch_size)
    self.media = media_cache.VisualTokenCache(int(settings.media_cache_gib * 2**30))
    self.blank = np.zeros_like(self.load(self.queries[0]))[None]  # [1, T, S, S, 3]
    self.predict = evaluator(model, params, config, vocabulary, benchmark, self.format,
                             self.classes, settings, self.batch)
    self.stored_support_features = None

  def load(self, example: Example) -> np.ndarray:
    """float32 [T, S, S, 3]: a clip's frames, or the image."""
    s = self.settings
    if not self.video:
      return self.loader.images(example.image_paths)
    if s.frame_sampling == "spread":
      return self.loader.clip(example.image_paths, s.num_frames)
    return self.loader.clip_at_rate(example.image_paths, s.frames_fps, s.clip_fps, s.num_frames)

  def encode_media(self, examples: list[Example]) -> list[np.ndarray]:
    """This host's media -> their visual tokens [R, D] each (collective: every host calls it,
    with whatever number of media of its own)."""
    encoded = self.batch.map_local(
        lambda images: encode(self.model, self.params, images), examples,
        lambda e: self.load(e)[None], self.blank)
    return [tokens[0] for tokens in encoded]

  def features(self, examples: list[Example]) -> np.ndarray:
    """RICES features [N, C] of the examples' first images, on every host."""
    return self.batch.map_all(
        lambda images: rices.pooled_features(self.model, self.params, images), examples,
        lambda e: self.loader.image(e.image_paths[0]))

  def support_features(self) -> np.ndarray:
    """The support split's RICES features [N, C], computed once an evaluation (and kept in
    `features_dir` for later runs)."""
    if self.stored_support_features is None:
      compute = lambda: self.features(self.support)
      if self.settings.features_dir:
        path = (pathlib.Path(self.settings.features_dir)
                / f"{self.name}_{self.benchmark.support_split}.npz")
        self.stored_support_features = rices.stored_features(
            path, [e.id for e in self.support], rices.tower_fingerprint(self.params), compute)
      else:
        self.stored_support_features = compute()
    return self.stored_support_features

  def prompt(self, query: Example, shown: list[Example], text_only: bool) -> list[int]:
    """The prompt's tokens: the support examples `shown`, then the query."""
    support = [(s.question, support_answer(self.classes, s)) for s in shown]
    if isinstance(self.format, idefics_prompts.Template):
      return idefics_prompts.prompt_tokens(self.format, support, query.question, self.vocabulary)
    return prompts.prompt_tokens(self.format, support, query.question, self.vocabulary,
                                 text_only_support=text_only)

  def inputs(self, prompt_list: list[list[int]], media: list[list[Example]], length: int):
    """A batch's prompts [B] and each one's media [B][M] -> global arrays: visual tokens
    [B, M, R, D] (this host's rows, from the media cache) and tokens and positions int32
    [B, length], left-padded."""
    tokens, positions = left_pad(prompt_list, length=length)
    local = [media[row] for row in self.batch.rows]
    by_key = {tuple(e.image_paths): e for row in local for e in row}
    visual = self.media.tokens([[tuple(e.image_paths) for e in row] for row in local],
                               lambda missing: self.encode_media([by_key[k] for k in missing]))
    return (self.batch.put(visual), self.batch.put(tokens[self.batch.rows]),
            self.batch.put(positions[self.batch.rows]))

  def run(self, shots: int, seed: int, done: Mapping[str, Any] = types.MappingProxyType({}),
          on_batch: Callable[[dict], None] = lambda predictions: None) -> dict:
    """{"metrics": {name: value} (on host 0; {} on the others), "predictions": {example id:
    prediction}, "support": {example id: the ids of the support examples its prompt showed, in
    order}} with `shots` support examples per query, the query subset and the support drawn
    with `seed`. Batches whose queries are all in `done` (host 0's) take their
    predictions from it; `on_batch` gets each computed batch's predictions."""
    settings, benchmark = self.settings, self.benchmark
    rng = np.random.default_rng(seed)
    queries = self.queries
    if settings.num_samples and settings.num_samples < len(queries):
      queries = [queries[i] for i in sorted(rng.choice(len(queries), settings.num_samples,
                                                       replace=False))]
    support = binding.episode_pool(queries) if self.episodic else self.support
    chosen = select_support(settings, shots, queries, support,
                            lambda: (self.features(queries), self.support_features()), rng,
                            self.episodic)
    close_ended = benchmark.task == "classification"
    orders = shot_orders(chosen.shape[1], settings.permutations if close_ended else 1, rng)
    finished = multihost_utils.broadcast_one_to_all(
        np.array([q.id in done for q in queries] + [False]))[:-1]
    text_only = shots == 0

    def batch_inputs(rows: np.ndarray, order: tuple, length: int):
      """The queries `rows`' prompts (their shots in `order`), padded to `length`, and media."""
      shown = [[support[chosen[q][k]] for k in order] for q in rows]
      return self.inputs([self.prompt(queries[q], s, text_only) for q, s in zip(rows, shown)],
                         [([] if text_only else s) + [queries[q]] for q, s in zip(rows, shown)],
                         length)
    # Prompts all padded to the run's longest, and whole batches (the last repeats its last
    # query): one shape, so one compilation serves the run. Only the lengths are kept here; a
    # batch builds its prompts again (a run's prompts in every order can be gigabytes).
    length = bucket(max(
        len(self.prompt(query, [support[chosen[q][k]] for k in order], text_only))
        for order in orders for q, query in enumerate(queries)))
    size, predictions = self.batch.size, {}
    with tqdm.tqdm(total=len(queries), desc=f"{self.name} {shots}-shot", unit="query",
                   leave=False, dynamic_ncols=True,
                   disable=jax.process_index() != 0) as progress:
      for start in range(0, len(queries), size):
        batch = queries[start:start + size]
        if finished[start:start + size].all():
          predictions.update({q.id: done[q.id] for q in batch if q.id in done})
          progress.update(len(batch))
          continue
        rows = np.minimum(np.arange(start, start + size), len(queries) - 1)
        outputs = [self.predict(*batch_inputs(rows, order, length)) for order in orders]
        if close_ended:
          outputs = [benchmark.prediction(row) for row in np.mean(outputs, axis=0)]
        else:
          outputs = outputs[0]
        computed = {query.id: prediction for query, prediction in zip(batch, outputs)}
        predictions.update(computed)
        on_batch(computed)
        progress.update(len(batch))
    support_ids = {q.id: [support[i].id for i in row] for q, row in zip(queries, chosen)}
    if jax.process_index() != 0:
      return {"metrics": {}, "predictions": predictions, "support": support_ids}
    metric = (functools.partial(benchmark.metric, rule=settings.vqa_rule)
              if benchmark.task == "vqa" else benchmark.metric)
    return {"metrics": metric(predictions, queries), "predictions": predictions,
            "support": support_ids}


def evaluate(model, params, config: ml_collections.ConfigDict, vocabulary: seqio.Vocabulary,
             name: str, data_dir: str, shots: int, settings: Settings = Settings()) -> dict:
  """`Evaluation.run`'s results for benchmark `name` with `shots` support examples per query,
  drawn with `settings.seed`."""
  return Evaluation(model, params, config, vocabulary, name, data_dir, settings).run(
      shots, settings.seed)
