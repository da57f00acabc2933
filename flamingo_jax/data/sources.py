"""On-disk formats -> seqio DataSources yielding the raw schemas of `preprocess.py`.

A source is a small frozen description (`Jsonl`, `WebDataset`, `TFRecord`, `Tfds`), so configs
can name one; `data_source(kind, stats)` builds the seqio DataSource and `preprocessors(kind)`
the seqio steps (renames) that bring its examples to the raw schema. `files` is a glob (the
"train" split) or {split: glob}. Formats:

- Jsonl: one JSON object a line. Documents in OBELICS form {"texts": [str | null],
  "images": [path | null]} (aligned: each position is a text or an image) or MMC4 form
  {"text_list": [str], "image_info": [{"image_name": path, "matched_text_index": i}]} (an image
  goes before the sentence it matches); pairs {"image": path, "text" or "caption": str}; videos
  {"video": path, "text" or "caption": str}. Paths are relative to `image_root`, by default the
  JSONL file's folder.
- WebDataset: tar shards of samples (`webdataset.py`). Pairs: an image member (jpg, png, ...)
  and a txt / caption member; videos: a video member (mp4, webm, ...) and a text member;
  documents: a json member in either form above whose image entries name members of the same
  sample ("0.jpg" for `key.0.jpg`), or MMC4 entries carrying "image_base64".
- TFRecord: tf.train.Example with the raw schema's fields as bytes features (documents: "texts"
  [N + 1] and "images" [N]); `fields` maps a raw field to the stored name, e.g.
  {"image": "image/encoded"}.
- Tfds: a TFDS image-text dataset (pairs only); the image is read as its encoded bytes so the
  same filters apply. A text field holding several captions (COCO) gives a random one.

Rules, counted in the task's `DataStats`: a JSON record that does not parse or has none of the
known forms -> corrupt_record, dropped; invalid UTF-8 in a JSONL line -> non_utf8_text, repaired
with U+FFFD. A path that does not exist, or a URL (nothing is downloaded), becomes empty bytes,
which `preprocess` counts as missing_image_file.
"""

import base64
import collections
import dataclasses
import functools
import json
import os
from typing import Callable

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flamingo_jax.data import webdataset
from flamingo_jax.data.images import DataStats

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")
TEXT_NAMES = ("txt", "text", "caption")

STRING, STRINGS = tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.string)
RAW_SIGNATURES = {
    "pair": {"image": STRING, "text": STRING},
    "interleaved": {"images": STRINGS, "texts": STRINGS},
    "video": {"video": STRING, "text": STRING},
}


def split_patterns(files: str | dict) -> dict[str, str]:
  return {"train": files} if isinstance(files, str) else dict(files)


# JSON records (JSONL lines, webdataset json members) -> raw examples.


def document_from_json(record: dict, load: Callable) -> dict:
  """OBELICS or MMC4 document -> {"images": [N] bytes, "texts": [N + 1] str}. `load(entry)`
  returns an image entry's bytes (b"" when missing)."""
  if "texts" in record and "images" in record:
    items = [(None, image) if image is not None else (text, None)
             for text, image in zip(record["texts"], record["images"])]
  elif "text_list" in record:
    by_sentence = collections.defaultdict(list)
    for info in record.get("image_info") or []:
      by_sentence[info["matched_text_index"]].append(info)
    items = []
    for i, sentence in enumerate(record["text_list"]):
      items += [(None, info) for info in by_sentence[i]] + [(sentence, None)]
  else:
    raise KeyError("neither OBELICS ('texts', 'images') nor MMC4 ('text_list') fields")
  texts, images = [""], []
  for text, image in items:
    if image is None:
      texts[-1] = f"{texts[-1]}\n{text}" if texts[-1] else (text or "")
    else:
      images.append(load(image))
      texts.append("")
  return {"images": images, "texts": texts}


def media_from_json(record: dict, key: str, load: Callable) -> dict:
  """Pair or video record -> {key: bytes, "text": str}."""
  text = next((record[k] for k in TEXT_NAMES if k in record), None)
  if key not in record or text is None:
    raise KeyError(f"a {key} record needs '{key}' and one of {TEXT_NAMES}")
  return {key: load(record[key]), "text": text}


def from_json(record: dict, kind: str, load: Callable) -> dict:
  if kind == "interleaved":
    return document_from_json(record, load)
  return media_from_json(record, "image" if kind == "pair" else "video", load)


def to_arrays(example: dict, kind: str) -> list[np.ndarray]:
  """Raw example -> values in RAW_SIGNATURES order, strings as utf-8 bytes."""
  encode = lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v)
  return [np.asarray([encode(v) for v in example[k]] if spec.shape.rank else encode(example[k]),
                     dtype=object) for k, spec in RAW_SIGNATURES[kind].items()]


def empty_arrays(kind: str) -> list[np.ndarray]:
  return [np.asarray([] if spec.shape.rank else b"", dtype=object)
          for spec in RAW_SIGNATURES[kind].values()]


def numpy_records(dataset: tf.data.Dataset, parse: Callable, kind: str,
                  stats: DataStats) -> tf.data.Dataset:
  """Maps `parse(*element)` (a raw example, or raises on a corrupt record) over a dataset of
  tuples, dropping (and counting) the corrupt records."""
  signature = RAW_SIGNATURES[kind]

  def numpy_fn(*values):
    try:
      return to_arrays(parse(*values), kind) + [True]
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
      stats.count("corrupt_record")
      return empty_arrays(kind) + [False]

  def convert(*values):
    outputs = tf.numpy_function(numpy_fn, list(values), [tf.string] * len(signature) + [tf.bool],
                                stateful=False)
    for value, spec in zip(outputs, [*signature.values(), STRING]):
      value.set_shape(spec.shape)
    return dict(zip([*signature, "keep"], outputs))

  dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.filter(lambda x: x["keep"]).map(lambda x: {k: x[k] for k in signature})


def read_file(path: str) -> bytes:
  """A file's bytes, or b"" if it does not exist or is a URL."""
  if "://" in path and not path.startswith("gs://") or not tf.io.gfile.exists(path):
    return b""
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def decode_line(line: bytes, stats: DataStats) -> str:
  try:
    return line.decode("utf-8")
  except UnicodeDecodeError:
    stats.count("non_utf8_text")
    return line.decode("utf-8", errors="replace")


def load_from_disk(entry, root: str) -> bytes:
  if isinstance(entry, dict):
    entry = entry["image_name"]
  return read_file(entry if os.path.isabs(entry) or "://" in entry else os.path.join(root, entry))


def load_from_sample(entry, members: dict) -> bytes:
  if isinstance(entry, dict):
    if "image_base64" in entry:
      return base64.b64decode(entry["image_base64"])
    entry = entry["image_name"]
  return members.get(entry, b"")


# Formats.


@dataclasses.dataclass(frozen=True)
class Jsonl:
  files: str | dict
  image_root: str | None = None

  def data_source(self, kind: str, stats: DataStats) -> seqio.DataSource:

    def parse(line, filename):
      root = self.image_root or os.path.dirname(filename.decode())
      record = json.loads(decode_line(line, stats))
      return from_json(record, kind, functools.partial(load_from_disk, root=root))

    def read(filename):
      lines = tf.data.TextLineDataset(filename)
      return numpy_records(lines.map(lambda line: (line, filename)), parse, kind, stats)

    return seqio.FileDataSource(read, split_patterns(self.files))

  def preprocessors(self, kind: str) -> list:
    return []


def pick(names: list[str], extensions: tuple[str, ...]) -> str | None:
  return next((n for n in names if n.lower() in extensions), None)


def from_sample(names, contents, kind: str) -> dict:
  """A webdataset sample's members -> a raw example."""
  members = dict(zip([n.decode() for n in names], contents))
  if kind == "interleaved":
    record = json.loads(members[pick(list(members), ("json",))])
    return document_from_json(record, functools.partial(load_from_sample, members=members))
  key, extensions = ("image", IMAGE_EXTENSIONS) if kind == "pair" else ("video", VIDEO_EXTENSIONS)
  media = pick(list(members), extensions)
  text = pick(list(members), TEXT_NAMES)
  if text is None and (meta := pick(list(members), ("json",))):
    record = json.loads(members[meta])
    text = next((record[k] for k in TEXT_NAMES if k in record), None)
  else:
    text = members.get(text)
  if text is None:
    raise KeyError(f"sample has no text member ({TEXT_NAMES}) nor json with one")
  return {key: members[media] if media else b"", "text": text}


@dataclasses.dataclass(frozen=True)
class WebDataset:
  files: str | dict

  def data_source(self, kind: str, stats: DataStats) -> seqio.DataSource:

    def read(filename):
      samples = webdataset.read_shard(filename, stats)
      return numpy_records(samples.map(lambda s: (s["names"], s["contents"])),
                           functools.partial(from_sample, kind=kind), kind, stats)

    return seqio.FileDataSource(read, split_patterns(self.files))

  def preprocessors(self, kind: str) -> list:
    return []


@dataclasses.dataclass(frozen=True)
class TFRecord:
  files: str | dict
  fields: dict = dataclasses.field(default_factory=dict)  # Raw field -> stored feature name.

  def data_source(self, kind: str, stats: DataStats) -> seqio.DataSource:
    description = {
        self.fields.get(k, k): tf.io.FixedLenFeature([], tf.string) if not spec.shape.rank
        else tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)
        for k, spec in RAW_SIGNATURES[kind].items()}
    return seqio.TFExampleDataSource(split_patterns(self.files), description)

  def preprocessors(self, kind: str) -> list:
    return [functools.partial(seqio.preprocessors.rekey,
                              key_map={k: self.fields.get(k, k) for k in RAW_SIGNATURES[kind]})]


@dataclasses.dataclass(frozen=True)
class Tfds:
  name: str  # "name:version", e.g. "coco_captions:1.1.0".
  data_dir: str | None = None
  image_key: str = "image"
  text_key: str = "text"  # "/" reaches into nested features: "captions/text".
  splits: tuple | None = None

  def data_source(self, kind: str, stats: DataStats) -> seqio.DataSource:
    if kind != "pair":
      raise ValueError(f"Tfds sources are image-text pairs; got kind {kind!r}")
    return seqio.TfdsDataSource(
        tfds_name=self.name, tfds_data_dir=self.data_dir, splits=self.splits,
        decoders={self.image_key: tfds.decode.SkipDecoding()})

  def preprocessors(self, kind: str) -> list:
    return [self.to_pair]

  def to_pair(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    """TFDS examples -> {"image", "text"}; one random caption where there are several."""

    @seqio.map_over_dataset(num_seeds=1)
    def convert(example, seed):
      text = functools.reduce(lambda x, k: x[k], self.text_key.split("/"), example)
      if text.shape.rank:
        pick = tf.random.stateless_uniform([], seed, 0, tf.shape(text)[0], tf.int32)
        text = text[pick]
      return {"image": example[self.image_key], "text": text}

    return convert(dataset)


SOURCES = {"jsonl": Jsonl, "webdataset": WebDataset, "tfrecord": TFRecord, "tfds": Tfds}
