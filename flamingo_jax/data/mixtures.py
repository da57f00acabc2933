"""Training batches from a mixture of Tasks with the paper's per-dataset loss weights lambda_m.

`config.data` (see configs/tiny.py):
  vocabulary: a `tokenizer.make_vocabulary` spec ("byte", the path of a SentencePiece model, or
    that of a pretrained LM's Hugging Face `tokenizer.json`); its size must be the LM's, so that
    `<image>` and `<EOC>` get the ids the model gives them.
  strategy: how the weights act, below.
  seed, split, task_modules (modules imported first: they register tasks),
  num_shards: how many shards the data is read in (0: one per process), below.
  synthetic: None, or {seed, split_sizes, ways, shots}: registers the offline synthetic tasks
    (`synthetic.py`) at the model's image size.
  tasks: {name: {weight, batch_size, max_length, max_images}}; a task that also has `kind`,
    `source` (and optionally `media`) is registered from the config (`tasks.register_from_config`).
    batch_size is global: each of the `num_shards` shards gives 1 / num_shards of its rows.

Every step is {key: batch}; batch = {images float32 [B, M, T, S, S, 3] normalised with the
vision tower's mean and std, tokens / targets int32 [B, L], weights float32 [B, L],
loss_weight float32 []}. The step's loss is sum over its batches of loss_weight * (mean token
loss of that batch) (`train.step`). Strategies:
- accumulate: a batch of every task each step, keyed by task; loss_weight = lambda_m. The
  paper's choice: gradients accumulate over all datasets each step.
- round_robin: step s is a batch of task s mod n only (tasks in name order, the order a
  ConfigDict keeps); loss_weight = lambda_m.
- sample: one batch, keyed "sample", whose examples come from task m with probability
  lambda_m / sum(lambda) (seqio's rate-based Mixture); loss_weight = 1, the weighting is in the
  rates. Tasks must then share batch_size, max_length, max_images and frames.

Shards: each task is read as `num_shards` pipelines (seqio's ShardInfo: disjoint examples, each
shuffled on its own), a global batch being shard 0's rows, then shard 1's, and so on. A process
reads a contiguous 1 / process_count of the shards (`host_shards`) and contributes their rows to
the global batch (`sharding.global_batch`). So with a fixed `num_shards` (a multiple of the
process count) the global batches hold the same examples however many processes read them, in
the same order where each process's devices hold a block of rows in process order (as on the
CPU); by default (0) each process is one shard, and the batches change with the process count.

Resuming: `MixtureIterator.save(directory)` writes the position of this host's shards (tf.data
iterator checkpoints, shuffle buffers included; a file per shard) and `restore` puts a fresh
iterator built from the same config at that position, so it yields exactly the batches the saved
one would have; with a fixed `num_shards`, on any number of processes.
"""

import importlib
import os
import zlib

import jax
import ml_collections
import numpy as np
import seqio
import tensorflow as tf

from flamingo_jax.data import preprocess
from flamingo_jax.data import synthetic
from flamingo_jax.data import tasks as tasks_lib
from flamingo_jax.data import tokenizer

STRATEGIES = ("accumulate", "round_robin", "sample")


def task_seed(seed: int, name: str) -> int:
  """A task's own seed: stable under adding or reordering the other tasks of a mixture."""
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def normalize(batch: dict, mean, std) -> dict:
  """uint8 images -> float32 (x / 255 - mean) / std, in the tf.data pipeline."""
  images = tf.cast(batch["images"], tf.float32) / 255.0
  normalised = (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
  return {**batch, "images": normalised}


class MixtureIterator:
  """Yields one training step's batches ({key: batch}, module docstring); saves and restores its
  position."""

  def __init__(self, datasets: dict[str, list[tf.data.Dataset]], loss_weights: dict[str, float],
               strategy: str, shards: list[seqio.ShardInfo], tasks: list[str]):
    """datasets: {key: [a batched dataset per shard of `shards`]}."""
    self.strategy = strategy
    self.tasks = tasks
    self.loss_weights = loss_weights
    self.shards = shards
    self._iterators = {name: [iter(ds) for ds in per_shard] for name, per_shard in datasets.items()}
    self._step = tf.Variable(0, dtype=tf.int64)  # Round robin's turn; part of the position.
    self._checkpoints = [
        tf.train.Checkpoint(step=self._step, **{name: iterators[k]
                                                for name, iterators in self._iterators.items()})
        for k in range(len(shards))]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, dict[str, np.ndarray]]:
    names = list(self._iterators)
    if self.strategy == "round_robin":
      names = [names[int(self._step.numpy()) % len(names)]]
    step = {}
    for name in names:
      rows = [jax.tree.map(np.asarray, next(iterator))  # Each shard's rows, in shard order.
              for iterator in self._iterators[name]]
      batch = rows[0] if len(rows) == 1 else jax.tree.map(lambda *x: np.concatenate(x), *rows)
      step[name] = {**batch, "loss_weight": np.float32(self.loss_weights[name])}
    self._step.assign_add(1)
    return step

  def report(self) -> str:
    """The input this host's tasks skipped or repaired so far, by rule (`preprocess.py`)."""
    return preprocess.report(self.tasks) or "data: no input skipped or repaired"

  @staticmethod
  def _prefix(directory: str, shard: seqio.ShardInfo) -> str:
    return os.path.join(directory, f"data-{shard.index:05d}-of-{shard.num_shards:05d}")

  def save(self, directory: str) -> None:
    """Writes the position of this host's shards under `directory`."""
    tf.io.gfile.makedirs(directory)
    for shard, checkpoint in zip(self.shards, self._checkpoints):
      checkpoint.write(self._prefix(directory, shard))

  def restore(self, directory: str) -> None:
    """Moves to the position `save` wrote (from an iterator built from the same config)."""
    for shard, checkpoint in zip(self.shards, self._checkpoints):
      prefix = self._prefix(directory, shard)
      if not tf.io.gfile.exists(prefix + ".index"):
        saved = sorted({os.path.basename(path).split(".")[0]
                        for path in tf.io.gfile.glob(os.path.join(directory, "data-*.index"))})
        raise ValueError(f"{directory} has no position of data shard {shard.index} of "
                         f"{shard.num_shards}, only {saved}: resume with the data.num_shards "
                         "it was saved with (0: one shard per process, so as many processes)")
      checkpoint.read(prefix).assert_consumed()


def register_tasks(config: ml_collections.ConfigDict) -> seqio.Vocabulary:
  """Imports `task_modules` and registers the synthetic and config-described tasks of
  `config.data`; returns the vocabulary after checking it against the LM."""
  data, model = config.data, config.model
  for module in data.get("task_modules", ()):
    importlib.import_module(module)
  vocabulary = tokenizer.make_vocabulary(data.vocabulary)
  if vocabulary.vocab_size != model.lm.vocab_size:
    raise ValueError(f"vocabulary {data.vocabulary!r} has {vocabulary.vocab_size} ids but the LM "
                     f"has {model.lm.vocab_size}: <image> and <EOC> would get the wrong ids")
  image_size = model.vision.image_size
  if data.get("synthetic") is not None:
    synthetic.register_synthetic_tasks(vocabulary, image_size=image_size, **data.synthetic)
  for name, task in data.tasks.items():
    if "source" in task:
      media = tasks_lib.media_spec(model.image_preprocessing, image_size, task.get("media"))
      tasks_lib.register_from_config(name, task, vocabulary, media)
  return vocabulary


def _check_same(tasks: dict, fields: tuple[str, ...]) -> None:
  for field in fields:
    if len({t[field] for t in tasks.values()}) > 1:
      raise ValueError(f"strategy 'sample' mixes examples into one batch, so all tasks need the "
                       f"same {field}; got {({n: t[field] for n, t in tasks.items()})}")


def host_shards(num_shards: int) -> list[seqio.ShardInfo]:
  """The shards this JAX process reads, of `num_shards` (0: one per process): process i of n
  the i-th contiguous n-th of them, whose rows its devices hold in a global batch."""
  count = jax.process_count()
  num_shards = num_shards or count
  if num_shards % count:
    raise ValueError(f"data.num_shards {num_shards} does not split over {count} processes")
  per_process = num_shards // count
  first = jax.process_index() * per_process
  return [seqio.ShardInfo(index, num_shards) for index in range(first, first + per_process)]


def make_iterator(config: ml_collections.ConfigDict,
                  shards: list[seqio.ShardInfo] | None = None, split: str | None = None,
                  shuffle: bool = True, repeat: bool = True) -> MixtureIterator:
  """This host's iterator over `config.data`'s mixture: its batches are the rows of `shards`
  (default: this process's of `data.num_shards`, `host_shards`), in their order."""
  data, model = config.data, config.model
  if data.strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {data.strategy!r}; choose from {STRATEGIES}")
  register_tasks(config)
  shards = shards or host_shards(data.get("num_shards", 0))
  split = split or data.get("split", "train")
  task_configs = {name: task.to_dict() for name, task in data.tasks.items()}
  preprocessing = model.image_preprocessing

  def batched(provider, seed, task, shard_info):
    if task["batch_size"] % shard_info.num_shards:
      raise ValueError(f"batch_size {task['batch_size']} does not split into "
                       f"{shard_info.num_shards} data shards")
    ds = provider.get_dataset(
        sequence_length={"tokens": task["max_length"], "images": task["max_images"]},
        split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
        num_epochs=None if repeat else 1, try_in_mem_cache=False)
    images = ds.element_spec["images"].shape
    if images[-2] != model.vision.image_size:
      raise ValueError(f"{provider.name} makes {images[-2]} px images; the vision tower takes "
                       f"{model.vision.image_size} px")
    ds = ds.batch(task["batch_size"] // shard_info.num_shards, drop_remainder=True)
    ds = ds.map(lambda b: normalize(b, preprocessing.mean, preprocessing.std),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  if data.strategy == "sample":
    _check_same(task_configs, ("batch_size", "max_length", "max_images"))
    weights = {name: task["weight"] for name, task in task_configs.items()}
    mixture = seqio.Mixture("flamingo_sample", list(weights.items()))
    task = next(iter(task_configs.values()))
    datasets = {"sample": [batched(mixture, data.seed, task, shard) for shard in shards]}
    loss_weights = {"sample": 1.0}
  else:
    datasets = {name: [batched(seqio.get_mixture_or_task(name), task_seed(data.seed, name), task,
                               shard) for shard in shards]
                for name, task in task_configs.items()}
    loss_weights = {name: task["weight"] for name, task in task_configs.items()}
  return MixtureIterator(datasets, loss_weights, data.strategy, shards, list(task_configs))
