"""Training batches from a mixture of Tasks with the paper's per-dataset loss weights lambda_m.

`config.data` (see configs/tiny.py):
  vocabulary: a `tokenizer.make_vocabulary` spec ("byte", the path of a SentencePiece model, or
    that of a pretrained LM's Hugging Face `tokenizer.json`); its size must be the LM's, so that
    `<image>` and `<EOC>` get the ids the model gives them.
  strategy: how the weights act, below.
  seed, split, task_modules (modules imported first: they register tasks),
  synthetic: None, or {seed, split_sizes, ways, shots}: registers the offline synthetic tasks
    (`synthetic.py`) at the model's image size.
  tasks: {name: {weight, batch_size, max_length, max_images}}; a task that also has `kind`,
    `source` (and optionally `media`) is registered from the config (`tasks.register_from_config`).
    batch_size is global: each of `shard_info.num_shards` hosts reads 1 / num_shards of it.

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

Resuming: `MixtureIterator.save(directory)` writes the position of this host's pipelines (tf.data
iterator checkpoints, shuffle buffers included) and `restore` puts a fresh iterator built from the
same config at that position, so it yields exactly the batches the saved one would have.
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
  return {**batch, "images": (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)}


class MixtureIterator:
  """Yields one training step's batches ({key: batch}, module docstring); saves and restores its
  position."""

  def __init__(self, datasets: dict[str, tf.data.Dataset], loss_weights: dict[str, float],
               strategy: str, shard_info: seqio.ShardInfo, tasks: list[str]):
    self.strategy = strategy
    self.tasks = tasks
    self.loss_weights = loss_weights
    self.shard_info = shard_info
    self._iterators = {name: iter(ds) for name, ds in datasets.items()}
    self._step = tf.Variable(0, dtype=tf.int64)  # Round robin's turn; part of the position.
    self._checkpoint = tf.train.Checkpoint(step=self._step, **self._iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, dict[str, np.ndarray]]:
    names = list(self._iterators)
    if self.strategy == "round_robin":
      names = [names[int(self._step.numpy()) % len(names)]]
    step = {}
    for name in names:
      batch = jax.tree.map(np.asarray, next(self._iterators[name]))
      step[name] = {**batch, "loss_weight": np.float32(self.loss_weights[name])}
    self._step.assign_add(1)
    return step

  def report(self) -> str:
    """The input this host's tasks skipped or repaired so far, by rule (`preprocess.py`)."""
    return preprocess.report(self.tasks) or "data: no input skipped or repaired"

  def _prefix(self, directory: str) -> str:
    index, count = self.shard_info.index, self.shard_info.num_shards
    return os.path.join(directory, f"data-{index:05d}-of-{count:05d}")

  def save(self, directory: str) -> None:
    """Writes this host's data position under `directory`."""
    tf.io.gfile.makedirs(directory)
    self._checkpoint.write(self._prefix(directory))

  def restore(self, directory: str) -> None:
    """Moves to the position `save` wrote (from an iterator built from the same config)."""
    self._checkpoint.read(self._prefix(directory)).assert_consumed()


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


def make_iterator(config: ml_collections.ConfigDict, shard_info: seqio.ShardInfo | None = None,
                  split: str | None = None, shuffle: bool = True,
                  repeat: bool = True) -> MixtureIterator:
  """This host's iterator over `config.data`'s mixture. shard_info defaults to one shard per
  JAX process."""
  data, model = config.data, config.model
  if data.strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {data.strategy!r}; choose from {STRATEGIES}")
  register_tasks(config)
  shard_info = shard_info or seqio.ShardInfo(jax.process_index(), jax.process_count())
  split = split or data.get("split", "train")
  task_configs = {name: task.to_dict() for name, task in data.tasks.items()}
  preprocessing = model.image_preprocessing

  def batched(provider, seed, task):
    if task["batch_size"] % shard_info.num_shards:
      raise ValueError(f"batch_size {task['batch_size']} does not split over "
                       f"{shard_info.num_shards} hosts")
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
    datasets = {"sample": batched(mixture, data.seed, next(iter(task_configs.values())))}
    loss_weights = {"sample": 1.0}
  else:
    datasets = {name: batched(seqio.get_mixture_or_task(name), task_seed(data.seed, name), task)
                for name, task in task_configs.items()}
    loss_weights = {name: task["weight"] for name, task in task_configs.items()}
  return MixtureIterator(datasets, loss_weights, data.strategy, shard_info, list(task_configs))
