"""Raw examples -> model examples, as one seqio preprocessor per kind of source.

Every source, whatever its format, yields one of three raw schemas (readers: `sources.py`):
- pair: {"image": encoded bytes or uint8 [H, W, 3], "text": bytes}
- interleaved: {"images": encoded bytes [N] or uint8 [N, H, W, 3], "texts": bytes [N + 1]}; text
  i comes before image i, text N after the last image. Empty texts are allowed.
- video: {"video": encoded container bytes (mp4, webm, ...), "text": bytes}
Empty image bytes mean the reader could not find the image.

The model example (`output_features`): images uint8 [M, T, S, S, 3] (M = sequence_length
"images", T = 1 for images and `MediaSpec.num_frames` for video; zeros past the example's own
media), tokens / targets int32 [L] and weights float32 [L] (`sequences.pad_example`), and
attach_to_next bool []: whether its text attends to the image after it (the model's mask,
`masking.attached_media_index`; the text stays in reading order).
Normalisation to the vision tower's mean and std happens after batching (`mixtures.py`), so
shuffle buffers hold uint8.

Rules for bad input; each is counted in the task's `DataStats` (`task_stats`):
- missing_image_file: empty image bytes -> the image is dropped.
- corrupt_image / oversized_image / small_image / extreme_aspect (`images.decode`) -> dropped.
- corrupt_video / oversized_video -> the example is dropped; short_video -> repaired
  (`video.decode_video`).
- non_utf8_text: invalid UTF-8 bytes become U+FFFD and the text is kept.
- empty_text: a pair or video whose text is empty, or a document with no text at all, is dropped.
- no_images: a pair, or a document, left with no image is dropped.
- corrupt_record: a document whose texts are not one more than its images is dropped.
- images_over_limit: a document window that shows more than M images ends before the (M+1)-th.
A dropped image of a document takes its place in the document with it; the texts on either side
join (with a space). Nothing here raises on bad data, so a run goes on.

Randomness (the window of a long document and the `Augmentation`s) comes from seqio's
per-example seeds: the same `seed` passed to `get_dataset` gives the same examples.
"""

import collections
import dataclasses
import functools

import numpy as np
import seqio
import tensorflow as tf

from flamingo_jax.data import images as images_lib
from flamingo_jax.data import sequences
from flamingo_jax.data import video as video_lib

KINDS = ("pair", "interleaved", "video")
RAW_KEYS = {"pair": ("image", "text"), "interleaved": ("images", "texts"),
            "video": ("video", "text")}
# Luma weights of RGB, for saturation jitter.
LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)
# What SentencePiece writes for a space (U+2581).
SENTENCEPIECE_SPACE = "\u2581"

_TASK_STATS = collections.defaultdict(images_lib.DataStats)


def task_stats(task: str) -> images_lib.DataStats:
  """The counters of skipped or repaired input of a task, since this process started."""
  return _TASK_STATS[task]


def report(tasks=None) -> str:
  """One line per task (of `tasks`, default all) that skipped or repaired input."""
  return "\n".join(f"{task}: {_TASK_STATS[task].report()}" for task in sorted(tasks or _TASK_STATS)
                   if _TASK_STATS[task].counts())


@dataclasses.dataclass(frozen=True)
class MediaSpec:
  """How a task turns stored media into model pixels: the vision tower's input size and resize
  rule (`images.resize_and_crop`), the web-image filters, and for video the frame rate and count
  (the paper: 8 frames at 1 FPS) and whether the clip starts at random (training) or is the
  video's centre (evaluation)."""
  image_size: int = 224
  resize: str = "shorter_side"
  filter: images_lib.ImageFilter = images_lib.ImageFilter()
  fps: float = 1.0
  num_frames: int = 8
  random_clip: bool = True


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The paper's per-example randomness (appendix A.3), as probabilities and strengths.

  attach_to_next: a document's text attends to the image after it rather than before (the
    paper's 1/2 per M3W page; 0 where text is known to follow its image).
  space_prefix: a pair's or video's caption starts with a space (the paper's 1/2), in its ids
    (`encode_after_space`).
  flip: an image (all frames of a video) is flipped left-right. The paper flips pair images;
    off by default since captions may name sides.
  colour_jitter: brightness, contrast and saturation are each scaled by a factor drawn from
    [1 - s, 1 + s]; the paper's strength is not given, so off by default.
  """
  attach_to_next: float = 0.5
  space_prefix: float = 0.5
  flip: float = 0.0
  colour_jitter: float = 0.0


NO_AUGMENTATION = Augmentation(attach_to_next=0.0, space_prefix=0.0)


def special_ids(vocabulary: seqio.Vocabulary) -> sequences.SpecialIds:
  """`<image>` and `<EOC>` take the first two ids after the vocabulary, as in the model config;
  a document opens with the vocabulary's BOS where it has one."""
  bos = vocabulary.bos_id
  return sequences.SpecialIds(media=vocabulary.vocab_size, eoc=vocabulary.vocab_size + 1,
                              eos=vocabulary.eos_id, pad=vocabulary.pad_id,
                              bos=bos if bos is not None and bos >= 0 else None)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  token = seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)
  return {"tokens": token, "targets": token,
          "weights": seqio.ContinuousFeature(dtype=tf.float32, rank=1),
          "attach_to_next": seqio.ContinuousFeature(dtype=tf.bool, rank=0),
          "images": seqio.ContinuousFeature(dtype=tf.uint8, rank=5)}


# Numpy: one raw example -> pieces of a document and its media.


def clean_text(raw: bytes, stats: images_lib.DataStats) -> str:
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    stats.count("non_utf8_text")
    text = raw.decode("utf-8", errors="replace")
  return text.strip()


def load_image(raw, media: MediaSpec, stats: images_lib.DataStats) -> np.ndarray | None:
  """Bytes or uint8 pixels -> uint8 [1, S, S, 3] (one frame), or None (counted)."""
  if isinstance(raw, np.ndarray) and raw.dtype == np.uint8:
    pixels = raw  # Made by code, not scraped: no web filters.
  elif not len(raw):
    stats.count("missing_image_file")
    return None
  else:
    pixels = images_lib.decode(bytes(raw), stats, media.filter)
    if pixels is None:
      return None
  return images_lib.resize_and_crop(pixels, media.image_size, media.resize)[None]


def load_video(raw: bytes, media: MediaSpec, stats: images_lib.DataStats,
               rng: np.random.Generator) -> np.ndarray | None:
  """Container bytes -> uint8 [T, S, S, 3], or None (counted)."""
  frames = video_lib.decode_video(bytes(raw), stats, fps=media.fps, num_frames=media.num_frames,
                                  rng=rng if media.random_clip else None,
                                  max_pixels=media.filter.max_pixels)
  if frames is None:
    return None
  return np.stack([images_lib.resize_and_crop(f, media.image_size, media.resize) for f in frames])


def augment_media(media: np.ndarray, augment: Augmentation,
                  rng: np.random.Generator) -> np.ndarray:
  """uint8 [T, S, S, 3] -> the same, flipped and colour-jittered per `augment`."""
  if rng.random() < augment.flip:
    media = media[:, :, ::-1]
  if augment.colour_jitter:
    brightness, contrast, saturation = rng.uniform(1 - augment.colour_jitter,
                                                   1 + augment.colour_jitter, 3)
    x = media.astype(np.float32) * brightness
    x = (x - x.mean()) * contrast + x.mean()
    grey = (x @ LUMA)[..., None]
    media = np.clip((x - grey) * saturation + grey, 0, 255).round().astype(np.uint8)
  return media


def join_texts(pieces: list) -> list:
  """Merges runs of consecutive texts (left where an image was dropped) and drops empty ones."""
  out = []
  for piece in pieces:
    if piece is sequences.IMAGE:
      out.append(piece)
    elif piece:
      if out and out[-1] is not sequences.IMAGE:
        out[-1] = f"{out[-1]} {piece}"
      else:
        out.append(piece)
  return out


def pair_document(raw: dict, media: MediaSpec, stats, rng) -> tuple[list, list] | None:
  text = clean_text(raw["text"], stats)
  if not text:
    stats.count("empty_text")
    return None
  image = load_image(raw["image"], media, stats)
  if image is None:
    stats.count("no_images")
    return None
  return [sequences.IMAGE, text], [image]


def video_document(raw: dict, media: MediaSpec, stats, rng) -> tuple[list, list] | None:
  text = clean_text(raw["text"], stats)
  if not text:
    stats.count("empty_text")
    return None
  frames = load_video(raw["video"], media, stats, rng)
  if frames is None:
    return None
  return [sequences.IMAGE, text], [frames]


def interleaved_document(raw: dict, media: MediaSpec, stats, rng) -> tuple[list, list] | None:
  if len(raw["texts"]) != len(raw["images"]) + 1:
    stats.count("corrupt_record")
    return None
  texts = [clean_text(t, stats) for t in raw["texts"]]
  pieces, loaded = [texts[0]], []
  for image, text in zip(raw["images"], texts[1:]):
    if (pixels := load_image(image, media, stats)) is not None:
      pieces.append(sequences.IMAGE)
      loaded.append(pixels)
    pieces.append(text)
  pieces = join_texts(pieces)
  if not loaded:
    stats.count("no_images")
    return None
  if len(pieces) == len(loaded):
    stats.count("empty_text")
    return None
  return pieces, loaded


def encode_after_space(text: str, vocabulary: seqio.Vocabulary) -> list[int]:
  """The ids of " " + text, the paper's space-prefix augmentation. SentencePiece's normaliser
  drops a leading space, so that " caption" and "caption" encode alike: there the space is its
  lone "▁" piece in front of the text's ids. Raises ValueError for a vocabulary that has
  neither, where the augmentation must be off (`Augmentation.space_prefix = 0`)."""
  spaced = vocabulary.encode(" " + text)
  if spaced != vocabulary.encode(text):
    return spaced
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    piece = vocabulary.tokenizer.piece_to_id(SENTENCEPIECE_SPACE)
    if piece != vocabulary.tokenizer.unk_id():
      return [piece, *spaced]
  raise ValueError(f"{vocabulary} encodes {' ' + text!r} as {text!r} and has no piece for a "
                   "lone space: set the space-prefix augmentation to 0 for it.")


DOCUMENTS = {"pair": pair_document, "interleaved": interleaved_document, "video": video_document}


def model_example(raw: dict, kind: str, media: MediaSpec, vocabulary: seqio.Vocabulary,
                  max_length: int, max_images: int, stats: images_lib.DataStats,
                  rng: np.random.Generator, augment: Augmentation = Augmentation()) -> dict | None:
  """A raw example -> {"images", "tokens", "targets", "weights", "attach_to_next"} (module
  docstring), or None when a rule drops it. Documents get a random window; pairs and videos
  keep their start."""
  document = DOCUMENTS[kind](raw, media, stats, rng)
  if document is None:
    return None
  pieces, media_arrays = document
  attach_to_next = kind == "interleaved" and rng.random() < augment.attach_to_next
  space = kind != "interleaved" and rng.random() < augment.space_prefix
  media_arrays = [augment_media(m, augment, rng) for m in media_arrays]
  ids = special_ids(vocabulary)
  caption = pieces[-1]
  pieces = [p if p is sequences.IMAGE else vocabulary.encode(p) for p in pieces]
  if space:  # The caption of a pair or video is its last piece.
    pieces[-1] = encode_after_space(caption, vocabulary)
  tokens, first, cut = sequences.window(sequences.layout(pieces, ids), ids, max_length,
                                        max_images, rng if kind == "interleaved" else None)
  if cut:
    stats.count("images_over_limit")
  example = sequences.pad_example(tokens, ids, max_length)
  shown = int(np.sum(example["tokens"] == ids.media))
  frames = 1 if kind != "video" else media.num_frames
  example["images"] = np.zeros((max_images, frames, media.image_size, media.image_size, 3),
                               np.uint8)
  if shown:
    example["images"][:shown] = np.stack(media_arrays[first:first + shown])
  example["attach_to_next"] = np.bool_(attach_to_next)
  return example


# seqio.


def prepare(dataset: tf.data.Dataset, sequence_length: dict, output_features: dict, *,
            kind: str, media: MediaSpec, task: str,
            augment: Augmentation = Augmentation()) -> tf.data.Dataset:
  """The seqio preprocessor: raw examples of `kind` -> model examples; dropped ones are removed.

  sequence_length: {"tokens": L, "images": M}. Bind kind, media, task (the counters' name) and
  augment with functools.partial.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
  if sequence_length is None or not {"tokens", "images"} <= set(sequence_length):
    raise ValueError(f"sequence_length must give 'tokens' and 'images', got {sequence_length}")
  max_length, max_images = sequence_length["tokens"], sequence_length["images"]
  vocabulary = output_features["tokens"].vocabulary
  if kind != "interleaved" and augment.space_prefix:
    encode_after_space("a", vocabulary)  # Fails here, not in the input pipeline.
  frames = media.num_frames if kind == "video" else 1
  run = functools.partial(model_example, kind=kind, media=media,
                          vocabulary=vocabulary, max_length=max_length,
                          max_images=max_images, stats=task_stats(task), augment=augment)
  shapes = {"tokens": [max_length], "targets": [max_length], "weights": [max_length],
            "images": [max_images, frames, media.image_size, media.image_size, 3],
            "attach_to_next": []}
  dtypes = {"tokens": tf.int32, "targets": tf.int32, "weights": tf.float32, "images": tf.uint8,
            "attach_to_next": tf.bool}

  def numpy_fn(seed, *values):
    # SeedSequence takes non-negative integers; the bits of seqio's int64 seed are the seed.
    rng = np.random.default_rng(np.asarray(seed).astype(np.uint64))
    example = run(dict(zip(RAW_KEYS[kind], values)), rng=rng)
    if example is None:
      return [np.zeros(shapes[k], dtypes[k].as_numpy_dtype) for k in shapes] + [False]
    return [example[k] for k in shapes] + [True]

  @seqio.map_over_dataset(num_seeds=1)
  def convert(raw, seed):
    values = tf.numpy_function(numpy_fn, [seed, *(raw[k] for k in RAW_KEYS[kind])],
                               [*dtypes.values(), tf.bool], stateful=False)
    for value, shape in zip(values, [*shapes.values(), []]):
      value.set_shape(shape)
    return dict(zip([*shapes, "keep"], values))

  dataset = convert(dataset).filter(lambda example: example["keep"])
  return dataset.map(lambda example: {k: example[k] for k in shapes},
                     num_parallel_calls=tf.data.AUTOTUNE)
