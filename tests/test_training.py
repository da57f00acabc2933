"""Frozen parameters get no gradient and no optimiser state; the train step learns."""

import re

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.configs import base
from flamingo_jax.flamingo import factory, trainable
from flamingo_jax.train import optimizer, step as step_lib

from test_flamingo import interleaved_batch


def make_batch(config):
  images, tokens = interleaved_batch(config)
  targets = jnp.roll(tokens, -1, axis=1)
  weights = (targets != config.model.media_token_id).astype(jnp.float32).at[:, -1].set(0.0)
  return dict(images=images, tokens=tokens, targets=targets, weights=weights,
              attach_to_next=jnp.zeros(tokens.shape[:1], bool))


def one_dataset_step(batch):
  """A mixture step (`data.mixtures`) of one dataset with lambda = 1."""
  return {"doc": {**batch, "loss_weight": jnp.float32(1.0)}}


def short_warmup_state(config, params, learning_rate):
  """The paper's optimiser with a 1-step warm-up: (tx, train state, frozen params)."""
  opt_config = base.optimizer_config()
  opt_config.warmup_steps = 1
  opt_config.learning_rate = learning_rate
  tx = optimizer.make_optimizer(opt_config)
  return (tx, *step_lib.init_train_state(params, tx, config.model.trainable))


def paths(tree):
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_frozen_parameters_have_no_gradient_and_no_optimizer_state(tiny_config, tiny_model):
  model, params = tiny_model
  tx, state, frozen = short_warmup_state(tiny_config, params, 1e-2)

  # Optimiser state mirrors the trainable tree only: no frozen path appears in it.
  trainable_paths = paths(state.params)
  frozen_paths = paths(frozen)
  assert trainable_paths and frozen_paths and not trainable_paths & frozen_paths
  moments = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
             if hasattr(s, "mu")][0]
  assert paths(moments.mu) == trainable_paths
  assert sum(x.size for x in jax.tree.leaves(state.opt_state)) < 3 * sum(
      x.size for x in jax.tree.leaves(state.params)) + 10
  assert sum(x.size for x in jax.tree.leaves(frozen)) > sum(
      x.size for x in jax.tree.leaves(state.params))

  batch = one_dataset_step(make_batch(tiny_config))
  step = jax.jit(lambda s, f, b: step_lib.train_step(model, tx, s, f, b, "per_token"))
  new_state, metrics = step(state, frozen, batch)  # Learning rate 0: warm-up starts at 0.
  new_state, metrics = step(new_state, frozen, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  # At closed gates only the gates themselves get a gradient; they open.
  for i in range(2):
    block = new_state.params[f"gated_xattn_{i}"]
    assert float(block["attention_gate"]) != 0 and float(block["ffw_gate"]) != 0
  assert bool(jnp.any(new_state.params["lm"]["extra_embedding"]
                      != state.params["lm"]["extra_embedding"]))


def test_gradient_through_the_merged_tree_is_zero_for_frozen_leaves(tiny_config, tiny_model):
  """Cross-check: differentiating the whole tree gives the same trainable gradients as the
  trainable-only step, so nothing is lost by leaving the frozen part out."""
  model, params = tiny_model
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.full_like(x, 0.5) if jax.tree_util.keystr(p).endswith("_gate']") else x, params)
  batch = make_batch(tiny_config)

  def loss(p):
    logits = model.apply({"params": p}, batch["images"], batch["tokens"])
    return step_lib.next_token_loss(logits, batch["targets"], batch["weights"])

  full_grads = jax.jit(jax.grad(loss))(params)
  train, frozen = trainable.split(params, tiny_config.model.trainable)
  train_grads = jax.jit(jax.grad(lambda t: loss(trainable.merge(t, frozen))))(train)
  expected, _ = trainable.split(full_grads, tiny_config.model.trainable)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), train_grads, expected)


def test_train_step_lowers_the_loss(tiny_config, tiny_model):
  model, params = tiny_model
  tx, state, frozen = short_warmup_state(tiny_config, params, 3e-3)
  batch = one_dataset_step(make_batch(tiny_config))
  step = jax.jit(lambda s, b: step_lib.train_step(model, tx, s, frozen, b, "per_token"))
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses


def two_datasets(config):
  """A mixture step of documents and of the same documents cut short (lambda 1 and 0.2), so
  that their per-token and per-sequence losses differ."""
  doc = make_batch(config)
  short = {**doc, "weights": doc["weights"].at[:, 6:].set(0.0)}
  return {"doc": {**doc, "loss_weight": jnp.float32(1.0)},
          "short": {**short, "loss_weight": jnp.float32(0.2)}}


def summed_losses(model, params, batches):
  """{key: (sum of -log p over the dataset's tokens, its tokens, its sequences)}."""
  out = {}
  for key, batch in batches.items():
    logits = model.apply({"params": params}, batch["images"], batch["tokens"])
    total, count = step_lib.token_loss_sums(logits, batch["targets"], batch["weights"])
    out[key] = float(total), float(count), batch["tokens"].shape[0]
  return out


def test_mixture_loss_is_the_lambda_weighted_sum_of_per_dataset_means(tiny_config, tiny_model):
  model, params = tiny_model
  batches = two_datasets(tiny_config)
  sums = summed_losses(model, params, batches)
  means = {key: total / count for key, (total, count, _) in sums.items()}
  assert abs(means["doc"] - means["short"]) > 1e-3
  total, per_batch = step_lib.mixture_loss(
      model, params, batches, step_lib.loss_denominators(batches, "per_token"))
  np.testing.assert_allclose(float(total), means["doc"] + 0.2 * means["short"], rtol=1e-5)
  np.testing.assert_allclose(float(per_batch["loss/short"]), means["short"], rtol=1e-5)


def test_per_sequence_loss_is_the_papers_eq_2(tiny_config, tiny_model):
  """sum_m lambda_m E_m[-sum_l log p]: each dataset's summed loss over its sequences, so a
  dataset of longer sequences weighs more than its per-token mean would give it; the same
  whole or in microbatches."""
  model, params = tiny_model
  batches = two_datasets(tiny_config)
  sums = summed_losses(model, params, batches)
  expected = sum(batches[key]["loss_weight"] * total / sequences
                 for key, (total, _, sequences) in sums.items())
  train, frozen = trainable.split(params, tiny_config.model.trainable)
  for microbatches in (1, 2):
    loss, per_batch, _ = jax.jit(lambda t: step_lib.loss_and_grads(
        model, t, frozen, batches, "per_sequence", microbatches))(train)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(per_batch["loss/doc"]), sums["doc"][0] / sums["doc"][2],
                               rtol=1e-5)
  token_mean, _, _ = step_lib.loss_and_grads(model, train, frozen, batches, "per_token")
  assert abs(float(token_mean) - float(expected)) > 1e-2


def test_paper_configs_normalise_per_sequence_and_the_others_per_token(tiny_config):
  for name in ("flamingo_3b", "flamingo_9b", "flamingo_80b"):
    config = flamingo_jax.load_config(name)
    assert config.train.loss_normalization == "per_sequence", name
  assert tiny_config.train.loss_normalization == "per_token"
  demo = flamingo_jax.load_config("demo")
  assert demo.train.loss_normalization == "per_token"
  with pytest.raises(ValueError, match="per_sequence"):
    step_lib.loss_denominators(two_datasets(tiny_config), "per_example")


def test_weight_decay_skips_norms_gates_biases_and_the_resampler():
  params = {"resampler": {"latents": jnp.ones((4, 2))},
            "gated_xattn_0": {"attention_gate": jnp.ones(()), "norm": {"scale": jnp.ones(2)},
                              "attention": {"query": {"kernel": jnp.ones((2, 2, 1))}}}}
  mask = optimizer.decay_mask(params, (r"^resampler/",))
  assert mask == {"resampler": {"latents": False},
                  "gated_xattn_0": {"attention_gate": False, "norm": {"scale": False},
                                    "attention": {"query": {"kernel": True}}}}
  schedule = optimizer.learning_rate_schedule(base.optimizer_config())
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(2500)), 5e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(400_000)), 1e-4, rtol=1e-6)
  cosine = base.optimizer_config()
  cosine.update(dict(decay="cosine", decay_steps=10_000, final_fraction=0.1))
  schedule = optimizer.learning_rate_schedule(cosine)
  np.testing.assert_allclose(float(schedule(5000)), 1e-4, rtol=1e-6)  # Peak after warm-up,
  np.testing.assert_allclose(float(schedule(10_000)), 5.5e-5, rtol=1e-5)  # half way down,
  np.testing.assert_allclose(float(schedule(15_000)), 1e-5, rtol=1e-5)  # then the floor.


def decayed_by_one_update(config) -> dict:
  """{trainable path, the gated block's index or scan prefix dropped: {whether the paper's
  optimiser moved it, for each of its units}} after one update with zero gradients from all-ones
  parameters: AdamW then moves exactly the parameters it decays."""
  model = factory.build_model(config)
  shapes, _ = factory.abstract_params_and_axes(model, config)
  train, _ = trainable.split(shapes, config.model.trainable)
  ones = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), train)
  opt_config = base.optimizer_config()
  opt_config.warmup_steps = 0
  tx = optimizer.make_optimizer(opt_config)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, ones), tx.init(ones), ones)
  moved = {}
  for path, update in traverse_util.flatten_dict(updates, sep="/").items():
    name = re.sub(r"^(scanned/gated_xattn|gated_xattn_\d+)/", "gated/", path)
    units = np.asarray(update).reshape(len(update) if path.startswith("scanned/") else 1, -1)
    moved.setdefault(name, set()).update(bool(unit.any()) for unit in units != 0)
  return moved


def test_weight_decay_is_the_same_scanned_and_unscanned(tiny_config):
  """Stacked under scan_layers, a LayerNorm's scale is [U, D]: it is still a norm, and no
  more decayed than the unscanned [D] one. Kernels and the new token rows are decayed in both
  layouts; norms, gates and the resampler in neither."""
  unscanned = decayed_by_one_update(factory.unscanned(tiny_config))
  stacked = tiny_config.copy_and_resolve_references()
  stacked.model.scan_layers = True
  scanned = decayed_by_one_update(stacked)
  assert scanned == unscanned
  assert all(len(v) == 1 for v in scanned.values())  # Every unit alike.
  assert scanned["gated/norm/scale"] == scanned["gated/ffw_gate"] == {False}
  assert scanned["gated/attention/query/kernel"] == scanned["lm/extra_embedding"] == {True}
  assert all(v == {False} for k, v in unscanned.items() if k.startswith("resampler/"))


def test_microbatches_add_up_to_the_whole_batch(tiny_config, tiny_model):
  model, params = tiny_model
  params = jax.tree_util.tree_map_with_path(  # Open gates: every trainable leaf gets a gradient.
      lambda p, x: jnp.full_like(x, 0.5) if jax.tree_util.keystr(p).endswith("_gate']") else x,
      params)
  train, frozen = trainable.split(params, tiny_config.model.trainable)
  doc = make_batch(tiny_config)
  short = {**doc, "weights": doc["weights"].at[0, 5:].set(0.0)}  # Rows of unequal token counts.
  batches = {"doc": {**doc, "loss_weight": jnp.float32(1.0)},
             "short": {**short, "loss_weight": jnp.float32(0.2)}}
  whole = jax.jit(lambda t: step_lib.loss_and_grads(model, t, frozen, batches, "per_token"))(train)
  sliced = jax.jit(lambda t: step_lib.loss_and_grads(model, t, frozen, batches, "per_token",
                                                      2))(train)
  # Equal up to float summation order.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), whole, sliced)
