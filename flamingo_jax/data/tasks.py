"""Registering a dataset as a seqio Task of model examples, in one call:

  tasks.register("my_mmc4", "interleaved", sources.Jsonl("/data/mmc4/*.jsonl"), vocabulary)

or from a config entry (`register_from_config`), so that a mixture can name a dataset that only
the config describes.
"""

import functools

import ml_collections
import seqio

from flamingo_jax.data import preprocess
from flamingo_jax.data import sources as sources_lib
from flamingo_jax.data.images import ImageFilter

# Examples held in the post-preprocessing shuffle buffer, per task and host. They hold uint8
# pixels (M x T x S x S x 3 bytes each): a 5-image 224 px document is 0.75 MB.
SHUFFLE_BUFFER_SIZE = 256


def register(name: str, kind: str, source, vocabulary: seqio.Vocabulary,
             media: preprocess.MediaSpec = preprocess.MediaSpec(),
             shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE,
             augment: preprocess.Augmentation = preprocess.Augmentation()) -> seqio.Task:
  """Registers (or replaces) Task `name`: `source` (a `sources` description, or anything with
  `data_source(kind, stats)` and `preprocessors(kind)`) read as `kind` ("pair", "interleaved",
  "video") and turned into model examples with `media`'s image size, resizing and filters, and
  `augment`'s randomness (the paper's by default; `preprocess.NO_AUGMENTATION` for none)."""
  if kind not in preprocess.KINDS:
    raise ValueError(f"unknown kind {kind!r}; known: {preprocess.KINDS}")
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=source.data_source(kind, preprocess.task_stats(name)),
      preprocessors=[*source.preprocessors(kind),
                     functools.partial(preprocess.prepare, kind=kind, media=media, task=name,
                                       augment=augment)],
      output_features=preprocess.output_features(vocabulary),
      shuffle_buffer_size=shuffle_buffer_size)


def source_from_config(config: ml_collections.ConfigDict):
  """{"format": "jsonl" | "webdataset" | "tfrecord" | "tfds", **that source's fields}."""
  fields = config.to_dict()
  source_format = fields.pop("format")
  if source_format not in sources_lib.SOURCES:
    raise ValueError(f"unknown format {source_format!r}; known: {sorted(sources_lib.SOURCES)}")
  return sources_lib.SOURCES[source_format](**fields)


def media_spec(preprocessing: ml_collections.ConfigDict, image_size: int,
               overrides: ml_collections.ConfigDict | None = None) -> preprocess.MediaSpec:
  """The vision tower's input size and resize rule, with a task's overrides (fps, num_frames,
  image filter fields)."""
  fields = dict(overrides.to_dict() if overrides else {})
  rules = ImageFilter(**{k: fields.pop(k) for k in ("min_side", "max_aspect", "max_pixels")
                         if k in fields})
  return preprocess.MediaSpec(image_size=image_size, resize=preprocessing.resize, filter=rules,
                              **fields)


def register_from_config(name: str, config: ml_collections.ConfigDict,
                         vocabulary: seqio.Vocabulary, media: preprocess.MediaSpec) -> seqio.Task:
  """A task described in a mixture config: {"kind", "source": {...}, optional
  "shuffle_buffer_size", "augment": {Augmentation fields}}."""
  augment = preprocess.Augmentation(**config.get("augment", {}))
  return register(name, config.kind, source_from_config(config.source), vocabulary, media,
                  config.get("shuffle_buffer_size", SHUFFLE_BUFFER_SIZE), augment)
