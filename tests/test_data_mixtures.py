"""Mixtures: the three strategies' per-task weighting, exact resume, determinism, host shards, and
batches the model trains on."""

import collections

import jax
import numpy as np
import pytest
import seqio

from flamingo_jax.configs import base, load_config
from flamingo_jax.data import mixtures, preprocess
from flamingo_jax.train import optimizer, step as step_lib

IDS = preprocess.special_ids(seqio.ByteVocabulary())


def config_with(strategy="accumulate", seed=0, **tasks):
  config = load_config("tiny")
  config.data.strategy = strategy
  config.data.seed = seed
  config.data.synthetic.split_sizes = {"train": 400, "validation": 24}
  if tasks:
    config.data.tasks = tasks
  return config


def steps(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_steps_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    jax.tree.map(np.testing.assert_array_equal, x, y)


def test_accumulate_gives_every_task_each_step_with_its_weight():
  config = config_with()
  iterator = mixtures.make_iterator(config)
  for step in steps(iterator, 2):
    assert list(step) == ["synthetic_binding", "synthetic_interleaved", "synthetic_pairs"]
    for name, batch in step.items():
      task = config.data.tasks[name]
      assert batch["loss_weight"] == np.float32(task.weight)
      assert batch["tokens"].shape == (task.batch_size, task.max_length)
      assert batch["images"].shape == (task.batch_size, task.max_images, 1, 32, 32, 3)
      assert batch["images"].dtype == np.float32


def test_round_robin_cycles_tasks_in_name_order_with_their_weights():
  config = config_with("round_robin")
  iterator = mixtures.make_iterator(config)
  names = sorted(config.data.tasks)
  for i, step in enumerate(steps(iterator, 5)):
    (name,) = step
    assert name == names[i % 3]
    assert step[name]["loss_weight"] == np.float32(config.data.tasks[name].weight)


def is_vqa(tokens) -> bool:
  """A synthetic VQA example reads "<image>Question: ..."; a caption does not."""
  return bytes(int(t) - 3 for t in tokens[1:10]) == b"Question:"


def test_sample_draws_tasks_in_proportion_to_their_weights():
  task = dict(batch_size=16, max_length=48, max_images=1)
  config = config_with("sample", synthetic_vqa=dict(weight=3.0, **task),
                       synthetic_pairs=dict(weight=1.0, **task))
  iterator = mixtures.make_iterator(config)
  counts = collections.Counter()
  for step in steps(iterator, 50):
    (batch,) = step.values()
    assert batch["loss_weight"] == 1.0
    counts.update(is_vqa(tokens) for tokens in batch["tokens"])
  # 800 draws with p = 3/4: the standard deviation of the fraction is 0.015.
  assert abs(counts[True] / 800 - 0.75) < 0.05, counts


def test_sample_needs_tasks_of_one_shape():
  config = config_with("sample", synthetic_vqa=dict(weight=1.0, batch_size=4, max_length=48,
                                                    max_images=1),
                       synthetic_interleaved=dict(weight=1.0, batch_size=4, max_length=96,
                                                  max_images=5))
  with pytest.raises(ValueError, match="same max_length"):
    mixtures.make_iterator(config)


@pytest.mark.parametrize("strategy", mixtures.STRATEGIES)
def test_restored_position_gives_the_identical_next_batches(strategy, tmp_path):
  task = dict(batch_size=4, max_length=64, max_images=5)
  config = config_with(strategy, synthetic_interleaved=dict(weight=1.0, **task),
                       synthetic_binding=dict(weight=0.5, **task))
  iterator = mixtures.make_iterator(config)
  steps(iterator, 3)
  iterator.save(str(tmp_path))
  expected = steps(iterator, 4)
  resumed = mixtures.make_iterator(config)
  resumed.restore(str(tmp_path))
  assert_steps_equal(steps(resumed, 4), expected)
  # A fresh iterator is at the start, not at the saved position.
  with pytest.raises(AssertionError):
    assert_steps_equal(steps(mixtures.make_iterator(config), 4), expected)


def test_same_seed_same_batches_other_seed_other_batches():
  first = steps(mixtures.make_iterator(config_with(seed=3)), 2)
  assert_steps_equal(first, steps(mixtures.make_iterator(config_with(seed=3)), 2))
  other = steps(mixtures.make_iterator(config_with(seed=4)), 2)
  assert not np.array_equal(first[0]["synthetic_pairs"]["tokens"],
                            other[0]["synthetic_pairs"]["tokens"])


def examples_of(iterator, name):
  """Every example of one pass, as (tokens bytes, images bytes)."""
  return [(t.tobytes(), i.tobytes()) for step in iterator
          for t, i in zip(step[name]["tokens"], step[name]["images"])]


def test_hosts_read_disjoint_shards_that_cover_the_split():
  config = config_with(synthetic_pairs=dict(weight=1.0, batch_size=4, max_length=48,
                                            max_images=1))
  read = lambda shard: examples_of(mixtures.make_iterator(
      config, shards=[shard], split="validation", shuffle=False, repeat=False),
      "synthetic_pairs")
  whole = read(seqio.ShardInfo(0, 1))
  hosts = [read(seqio.ShardInfo(i, 2)) for i in range(2)]
  assert len(whole) == 24 and [len(h) for h in hosts] == [12, 12]
  assert not set(hosts[0]) & set(hosts[1])
  assert set(hosts[0]) | set(hosts[1]) == set(whole)


def two_shards_config():
  config = config_with(synthetic_interleaved=dict(weight=1.0, batch_size=4, max_length=64,
                                                  max_images=3),
                       synthetic_pairs=dict(weight=0.2, batch_size=4, max_length=24,
                                            max_images=1))
  config.data.num_shards = 2
  return config


def joined(parts):
  """The steps of processes reading a shard each -> the step of the global batch."""
  return jax.tree.map(lambda *rows: np.concatenate(rows) if np.ndim(rows[0]) else rows[0],
                      *parts)


def test_the_batches_of_fixed_shards_are_the_same_however_many_processes_read_them(tmp_path):
  config = two_shards_config()
  both = mixtures.make_iterator(config)  # One process reads both shards.
  assert both.shards == [seqio.ShardInfo(0, 2), seqio.ShardInfo(1, 2)]
  each = [mixtures.make_iterator(config, shards=[shard]) for shard in both.shards]
  assert_steps_equal(steps(both, 2), [joined(s) for s in zip(*(steps(i, 2) for i in each))])
  # The position one process saved resumes in two, each at its own shard's.
  both.save(str(tmp_path))
  expected = steps(both, 2)
  each = [mixtures.make_iterator(config, shards=[shard]) for shard in both.shards]
  for iterator in each:
    iterator.restore(str(tmp_path))
  assert_steps_equal([joined(s) for s in zip(*(steps(i, 2) for i in each))], expected)


def test_a_position_resumes_only_on_the_shards_it_was_saved_with(tmp_path):
  mixtures.make_iterator(config_with()).save(str(tmp_path))  # One shard: this process.
  with pytest.raises(ValueError, match=r"no position of data shard 0 of 2, only "
                     r"\['data-00000-of-00001'\]: resume with the data.num_shards"):
    mixtures.make_iterator(two_shards_config()).restore(str(tmp_path))


def test_images_are_normalised_with_the_towers_mean_and_std():
  config = config_with()
  batch = next(mixtures.make_iterator(config))["synthetic_pairs"]
  pre = config.model.image_preprocessing
  pixels = (batch["images"] * np.asarray(pre.std) + np.asarray(pre.mean)) * 255
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
  assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
  # The synthetic background is grey 128 in the top-left corner of every image.
  np.testing.assert_allclose(pixels[:, 0, 0, 0, 0], 128, atol=1e-3)


def test_a_mixture_step_trains_the_model(tiny_model):
  model, params = tiny_model
  config = config_with(synthetic_interleaved=dict(weight=1.0, batch_size=2, max_length=48,
                                                  max_images=3),
                       synthetic_pairs=dict(weight=0.2, batch_size=2, max_length=24,
                                            max_images=1))
  opt_config = base.optimizer_config()
  opt_config.warmup_steps = 1
  tx = optimizer.make_optimizer(opt_config)
  state, frozen = step_lib.init_train_state(params, tx, config.model.trainable)
  train_step = jax.jit(lambda s, b: step_lib.train_step(model, tx, s, frozen, b, "per_token"))
  for batches in steps(mixtures.make_iterator(config), 2):
    state, metrics = train_step(state, batches)
  assert set(metrics) == {"loss", "grad_norm", *(f"loss/{n}" for n in config.data.tasks)}
  expected = sum(config.data.tasks[n].weight * metrics[f"loss/{n}"] for n in config.data.tasks)
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
