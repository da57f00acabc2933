"""WebDataset tar shards -> tf.data samples, checkpointable by tf.data's iterator checkpoints.

A shard is a plain (uncompressed) tar file; a sample is a run of consecutive members sharing a
key, the member's path up to the first '.' of its basename: `dir/000123.jpg` and
`dir/000123.txt` are the sample `dir/000123` with members "jpg" and "txt"; `000123.0.jpg` is
member "0.jpg". Members other than regular files, and basenames with no '.' or starting with
one, are ignored. A shard is indexed from its headers alone (offsets and sizes), then each
sample's bytes are read on demand, so a sample costs one read wherever the shard lives (gs://
included).

Rules (each a counter in `DataStats`):
- corrupt_tar: a shard that is truncated or damaged (a header that does not parse, data cut
  short, no end-of-archive block) -> the samples before the damage are kept; the sample being
  read when the damage was found, possibly missing members, is dropped. Compressed tars are not
  random-access and count here too.
"""

import json
import tarfile

import numpy as np
import tensorflow as tf

from flamingo_jax.data.images import DataStats

BLOCK = tarfile.BLOCKSIZE


def split_name(path: str) -> tuple[str, str] | None:
  """Member path -> (sample key, member name), or None for a basename with no key or name."""
  basename = path.rsplit("/", 1)[-1]
  stem, dot, name = basename.partition(".")
  if not stem or not dot:
    return None
  return path[:len(path) - len(name) - 1], name


def index_tar(path: str, stats: DataStats) -> list[tuple[str, dict[str, tuple[int, int]]]]:
  """Reads a shard's headers -> [(key, {name: (offset, size)})], one entry per sample in tar
  order; the offsets are of the members' data in the file."""
  samples = []
  with tf.io.gfile.GFile(path, "rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
          parts = split_name(info.name) if info.isreg() else None
          if parts is None:
            continue
          key, name = parts
          if not samples or samples[-1][0] != key:
            samples.append((key, {}))
          samples[-1][1][name] = (info.offset_data, info.size)
        # tarfile ends quietly on a cut or unparsable header past the first; only a zero block
        # marks a real end.
        f.seek(tar.offset)
        intact = f.read(BLOCK) == bytes(BLOCK)
    except (tarfile.TarError, tf.errors.OutOfRangeError):  # GFile raises on a seek past the end.
      intact = False
  if not intact:
    stats.count("corrupt_tar")
    return samples[:-1]
  return samples


def read_members(path: str, members: dict[str, tuple[int, int]]) -> list[bytes]:
  """The members' bytes, in `members` order; they are adjacent in the tar, so one read."""
  start = min(offset for offset, _ in members.values())
  end = max(offset + size for offset, size in members.values())
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(start)
    span = f.read(end - start)
  return [span[offset - start:offset - start + size] for offset, size in members.values()]


def encode(text: str) -> bytes:
  return text.encode("utf-8", "surrogateescape")  # Undoes tarfile's decoding of raw names.


def decode(value) -> str:
  """A tf.string scalar as numpy_function passes it (bytes, or a 0-d array when eager) -> str."""
  return np.asarray(value).item().decode()


def read_shard(filename: tf.Tensor, stats: DataStats) -> tf.data.Dataset:
  """Scalar tf.string path -> dataset of {"key": tf.string [], "names": tf.string [E],
  "contents": tf.string [E]}, one per sample in tar order.

  Built from tf.data ops only (the index is a tensor sliced by `from_tensor_slices`, the reads
  a stateless map), so tf.data iterator checkpoints save and restore the position in a shard.
  Meant as `read_file_fn` of `seqio.FileDataSource`.
  """

  def index(path):
    samples = index_tar(decode(path), stats)
    return (np.array([encode(key) for key, _ in samples], object),
            np.array([json.dumps(m).encode() for _, m in samples], object))

  def read(path, members):
    members = json.loads(decode(members))
    contents = read_members(decode(path), members)
    return np.array([encode(name) for name in members], object), np.array(contents, object)

  def load(key, members):
    names, contents = tf.numpy_function(read, [filename, members], (tf.string, tf.string),
                                        stateful=False)
    return {"key": key, "names": tf.ensure_shape(names, [None]),
            "contents": tf.ensure_shape(contents, [None])}

  keys, members = tf.numpy_function(index, [filename], (tf.string, tf.string), stateful=False)
  return tf.data.Dataset.from_tensor_slices(
      (tf.ensure_shape(keys, [None]), tf.ensure_shape(members, [None]))).map(load)
