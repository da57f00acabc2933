"""Input pipeline throughput: model examples per second from each on-disk format, on this host.

Writes `--num_examples` image-text pairs (JPEG, 320 x 256 photos-sized noise, so decoding costs
what a web image costs) and documents of 5 such images in each format under a temporary folder,
then reads them through the seqio Tasks at the vision tower's size, as training does (decode,
filter, resize and crop, tokenise, lay out, batch). Prints a table.

  python benchmarks/data_throughput.py --num_examples=512 --image_size=224
"""

import io
import json
import os
import tarfile
import tempfile
import time

from absl import app, flags
import numpy as np
import seqio
import tensorflow as tf
from PIL import Image

from flamingo_jax.data import preprocess, sources, tasks

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_examples", 512, "Examples per format.")
flags.DEFINE_integer("image_size", 224, "The vision tower's input size.")
flags.DEFINE_integer("batch_size", 32, "Examples per batch.")


def jpeg(rng) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (256, 320, 3), np.uint8)).save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


def write_formats(folder: str, n: int, rng) -> dict:
  """-> {(kind, format): source} over n examples each."""
  caption = "A photograph of something on a table, taken in daylight."
  images = [jpeg(rng) for _ in range(64)]  # Reused: encoding is not what is measured.
  pick = lambda i: images[i % len(images)]
  os.makedirs(f"{folder}/img")
  for i in range(len(images)):
    with open(f"{folder}/img/{i}.jpg", "wb") as f:
      f.write(images[i])
  with open(f"{folder}/pairs.jsonl", "w") as f:
    f.writelines(json.dumps({"image": f"img/{i % 64}.jpg", "text": caption}) + "\n"
                 for i in range(n))
  with open(f"{folder}/docs.jsonl", "w") as f:
    f.writelines(json.dumps({"texts": [t for k in range(5) for t in (None, caption)],
                             "images": [p for k in range(5) for p in (f"img/{(i + k) % 64}.jpg",
                                                                       None)]}) + "\n"
                 for i in range(n))
  with tarfile.open(f"{folder}/pairs.tar", "w") as tar:
    for i in range(n):
      for name, data in (("jpg", pick(i)), ("txt", caption.encode())):
        info = tarfile.TarInfo(f"{i:06d}.{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  with tf.io.TFRecordWriter(f"{folder}/pairs.tfrecord") as writer:
    for i in range(n):
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pick(i)])),
          "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[caption.encode()]))}))
                   .SerializeToString())
  return {("pair", "jsonl"): sources.Jsonl(f"{folder}/pairs.jsonl"),
          ("pair", "webdataset"): sources.WebDataset(f"{folder}/pairs.tar"),
          ("pair", "tfrecord"): sources.TFRecord(f"{folder}/pairs.tfrecord"),
          ("interleaved", "jsonl"): sources.Jsonl(f"{folder}/docs.jsonl")}


def examples_per_second(name: str, kind: str, source, n: int) -> float:
  media = preprocess.MediaSpec(image_size=FLAGS.image_size)
  tasks.register(name, kind, source, seqio.ByteVocabulary(), media)
  lengths = {"tokens": 256, "images": 5} if kind == "interleaved" else {"tokens": 64, "images": 1}
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False, seed=0)
  ds = ds.batch(FLAGS.batch_size).prefetch(2)
  iterator = iter(ds)
  next(iterator)  # Start-up (graph building, first files) is not throughput.
  start, count = time.perf_counter(), 0
  for batch in iterator:
    count += len(batch["tokens"])
  seconds = time.perf_counter() - start
  del iterator
  return count / seconds


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  print(f"{os.cpu_count()} CPUs, {FLAGS.image_size} px, batch {FLAGS.batch_size}")
  print("| kind | format | examples/s | images/s |\n| --- | --- | --- | --- |")
  with tempfile.TemporaryDirectory() as folder:
    for (kind, fmt), source in write_formats(folder, FLAGS.num_examples, rng).items():
      rate = examples_per_second(f"bench_{kind}_{fmt}", kind, source, FLAGS.num_examples)
      per_example = 5 if kind == "interleaved" else 1
      print(f"| {kind} | {fmt} | {rate:.0f} | {rate * per_example:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
