"""Few-shot evaluation of a Flamingo model on one benchmark (flamingo_jax.evaluation.benchmarks).

For every query of the evaluation split: pick N support examples from the support split
(random, or RICES), build the prompt (flamingo_jax.evaluation.prompts), then
- captioning and VQA: beam search until `<EOC>` (OpenFlamingo's settings by default: 3 beams,
  20 new tokens for captions, 5 for answers), the text post-processed into the answer;
- classification: the log-likelihood of every class name (close-ended scoring); ImageNet
  predicts the best class, HatefulMemes scores "yes" against "no".
Zero shots is the paper's zero-shot mode: two text-only support examples. An episodic
benchmark (novel-word binding) prompts each query with its own first N support examples.
"""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio

from flamingo_jax.data import images as images_lib
from flamingo_jax.decode import beam_search, candidate_log_likelihoods, left_pad, right_pad
from flamingo_jax.evaluation import prompts, rices
from flamingo_jax.evaluation.benchmarks import BENCHMARKS
from flamingo_jax.evaluation.datasets import Example

# OpenFlamingo's generation lengths.
MAX_NEW_TOKENS = {"caption": 20, "vqa": 5, "video_vqa": 5, "binding": 5}
# Benchmark images are scored as they are: none of the web-scrape filters of training applies.
BENCHMARK_IMAGES = images_lib.ImageFilter(min_side=1, max_aspect=float("inf"))


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


class MediaLoader:
  """Example -> float32 [T, S, S, 3], resized, cropped and normalised as the model's tower
  expects (config.model.image_preprocessing); files are read once."""

  def __init__(self, model_config: ml_collections.ConfigDict, num_frames: int):
    self.size = model_config.vision.image_size
    self.preprocessing = model_config.image_preprocessing
    self.num_frames = num_frames
    self.stats = images_lib.DataStats()

  @functools.lru_cache(maxsize=4096)
  def image(self, path: str) -> np.ndarray:
    with open(path, "rb") as f:
      pixels = images_lib.decode(f.read(), self.stats, BENCHMARK_IMAGES)
    if pixels is None:
      raise ValueError(f"Cannot read the image {path}.")
    pixels = images_lib.resize_and_crop(pixels, self.size, self.preprocessing.resize)
    return images_lib.normalize(pixels, self.preprocessing.mean, self.preprocessing.std)

  def __call__(self, example: Example, video: bool) -> np.ndarray:
    paths = example.image_paths
    if video:
      paths = [paths[i] for i in np.linspace(0, len(paths) - 1, self.num_frames).round().astype(int)]
    return np.stack([self.image(p) for p in paths])


def support_answer(classes, example: Example) -> str:
  """The text a support example shows: its class name, or its most common answer (a caption's
  first reference)."""
  if classes is not None:
    return classes[example.label]
  return collections.Counter(example.answers).most_common(1)[0][0]


def bucket(length: int, multiple: int = 16) -> int:
  """Prompt lengths round up to a multiple, so that few shapes compile."""
  return -(-length // multiple) * multiple


def decode_text(tokens: np.ndarray, vocabulary: seqio.Vocabulary, stop: int) -> str:
  """Generated ids -> text, up to the stop token; ids past the vocabulary are dropped."""
  ids = [int(t) for t in tokens]
  ids = ids[:ids.index(stop)] if stop in ids else ids
  return vocabulary.decode([t for t in ids if t < vocabulary.vocab_size])


def episode_support(queries: list[Example], shots: int) -> np.ndarray:
  """Indices [Q, shots] of each query's own first `shots` support examples in the list of all
  the queries' support examples, in order."""
  sizes = np.array([len(q.support) for q in queries])
  if shots > sizes.min():
    raise ValueError(f"{shots} shots, but an episode has only {sizes.min()} support examples")
  starts = np.cumsum(sizes) - sizes
  return starts[:, None] + np.arange(shots)


def select_support(settings: Settings, shots: int, queries: list[Example], support: list[Example],
                   features, rng: np.random.Generator, episodic: bool = False) -> np.ndarray:
  """Support indices [Q, n]: zero shots take two random text-only examples (for an episodic
  benchmark, from any episode: their words say nothing about the query's)."""
  if shots == 0:
    return rices.random_support(len(queries), len(support), prompts.ZERO_SHOT_TEXT_EXAMPLES, rng)
  if episodic:
    return episode_support(queries, shots)
  if settings.selection == "rices":
    return rices.rices(features(queries), features(support), shots)
  if settings.selection != "random":
    raise ValueError(f"Unknown support selection {settings.selection!r}: random or rices.")
  return rices.random_support(len(queries), len(support), shots, rng)


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
  support = ([s for q in queries for s in q.support] if episodic
             else benchmark.read(data_dir, benchmark.support_split))
  classes = benchmark.classes(data_dir) if benchmark.classes else None
  style = prompts.FORMATS[settings.style]
  format_ = style[name] if name in style else style[benchmark.task]
  video = benchmark.task == "video_vqa"
  load = MediaLoader(config.model, settings.num_frames)
  if settings.selection == "rices" and video:
    raise ValueError("RICES retrieves by image features; use random support for video.")

  def features(examples):
    return np.concatenate([np.asarray(rices.pooled_features(
        model, params, jnp.asarray(np.stack([load(e, False)[0] for e in examples[i:i + 64]]))))
        for i in range(0, len(examples), 64)])

  chosen = select_support(settings, shots, queries, support, features, rng, episodic)
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
      media.append(np.stack(([] if text_only else [load(s, video) for s in shown])
                            + [load(query, video)]))
    # A short last batch repeats its last query, so that every batch has one shape.
    filler = settings.batch_size - len(batch)
    prompt_list += [prompt_list[-1]] * filler
    media += [media[-1]] * filler
    tokens, positions = left_pad(prompt_list, length=bucket(max(map(len, prompt_list))))
    images = jnp.asarray(np.stack(media))
    if classes is not None:
      scores = class_log_likelihoods(model, params, images, tokens, positions, classes, format_,
                                     vocabulary, settings.candidate_chunk)[:len(batch)]
      for query, row in zip(batch, scores):
        predictions[query.id] = (float(row[1] - row[0]) if name == "hateful_memes"
                                 else int(np.argmax(row)))
    else:
      stop = int(config.model.eoc_token_id)
      seqs, _ = beam_search(model, params, images, jnp.asarray(tokens),
                            settings.max_new_tokens or MAX_NEW_TOKENS[benchmark.task],
                            beam_size=settings.beam_size,
                            length_penalty=settings.length_penalty, stop_token=stop,
                            positions=jnp.asarray(positions))
      for query, row in zip(batch, np.asarray(seqs[:, 0])):
        predictions[query.id] = prompts.postprocess(decode_text(row, vocabulary, stop),
                                                    benchmark.task)
  return {"metrics": benchmark.metric(predictions, queries), "predictions": predictions}


def class_log_likelihoods(model, params, images, tokens, positions, classes, format_,
                          vocabulary, chunk: int) -> np.ndarray:
  """[B, num classes]: log p(class name, then `<EOC>` | prompt), `chunk` names per call (the
  last chunk padded to the same shape)."""
  candidates = [prompts.answer_tokens(format_, c, vocabulary) for c in classes]
  width = max(map(len, candidates))
  scores = []
  for start in range(0, len(candidates), chunk):
    part = candidates[start:start + chunk]
    tokens_c, mask = right_pad(part + [part[-1]] * (min(chunk, len(candidates)) - len(part)))
    tokens_c = np.pad(tokens_c, ((0, 0), (0, width - tokens_c.shape[1])))
    mask = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
    scores.append(np.asarray(candidate_log_likelihoods(
        model, params, images, jnp.asarray(tokens), jnp.asarray(tokens_c), jnp.asarray(mask),
        jnp.asarray(positions)))[:, :len(part)])
  return np.concatenate(scores, axis=1)
