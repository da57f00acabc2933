"""The paper's precision on the tiny model, set by its one switch (`config.precision`,
configs/base.set_precision): bfloat16 activations with the frozen weights stored in bfloat16,
the trained ones and the optimiser in float32, against the same computation in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flamingo_jax
from flamingo_jax import sharding
from flamingo_jax.configs.base import PRECISIONS
from flamingo_jax.decode import encode, generate
from flamingo_jax.flamingo import trainable as trainable_lib
from flamingo_jax.train import step as step_lib
from flamingo_jax.train import trainer as trainer_lib

from test_flamingo import interleaved_batch, open_gates


def switched(precision: str):
  """The tiny config with `config.precision` set, as `--config.precision=` sets it."""
  config = flamingo_jax.load_config("tiny")
  config.precision = precision
  return config


def models(tiny_config):
  """{precision: (model, trainable params, frozen params)}: one set of weights, the frozen
  ones stored in the precision's `train.frozen_dtype`."""
  out = {}
  params = None
  for precision in PRECISIONS:
    config = switched(precision)
    model, fresh = flamingo_jax.create(config, jax.random.key(0))
    params = open_gates(fresh) if params is None else params
    train, frozen = trainable_lib.split(params, config.model.trainable)
    out[precision] = (model, train, jax.tree.map(
        lambda x: x.astype(config.train.frozen_dtype), frozen))
  return out


def one_batch(tiny_config) -> dict:
  images, tokens = interleaved_batch(tiny_config)
  return {"images": images, "tokens": tokens[:, :-1], "targets": tokens[:, 1:],
          "weights": jnp.ones(tokens[:, 1:].shape, jnp.float32),
          "attach_to_next": jnp.zeros((2,), bool), "loss_weight": jnp.float32(1.0)}


def dtypes(tree) -> set[str]:
  return {x.dtype.name for x in jax.tree.leaves(tree)}


def test_the_switch_moves_activations_and_frozen_storage_and_nothing_else():
  config = switched("bfloat16")
  assert config.model.dtype == config.train.frozen_dtype == "bfloat16"
  assert config.model.param_dtype == "float32"
  # Overriding one of them alone leaves the switch and the other.
  config.model.dtype = "float32"
  assert config.precision == config.train.frozen_dtype == "bfloat16"
  paper = flamingo_jax.load_config("flamingo_3b")
  assert paper.precision == paper.model.dtype == paper.train.frozen_dtype == "bfloat16"


def test_the_trainer_under_the_switch_keeps_the_papers_dtypes(tiny_config):
  """A training step of the Trainer itself: frozen weights stored in bfloat16, the trained
  ones and Adam's moments in float32 before and after the update, and the loss of the float32
  run within 0.1%."""
  losses = {}
  for precision in PRECISIONS:
    trainer = trainer_lib.Trainer(switched(precision), jax.devices()[:1])
    train, frozen = trainer.initial_params()
    state = trainer.initial_state(train)
    assert dtypes(frozen) == {precision}
    batches = sharding.global_batch({"mix": one_batch(tiny_config)}, trainer.mesh,
                                    trainer.rules)
    executable, _ = trainer.compiled_step(state, frozen, batches)
    state, metrics = executable(state, frozen, batches)
    assert dtypes(state.params) == {"float32"}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and dtypes(moments) == {"float32"}
    assert metrics["loss"].dtype == jnp.float32
    losses[precision] = float(metrics["loss"])
  assert abs(losses["bfloat16"] - losses["float32"]) < 1e-3 * losses["float32"], losses


def test_a_bfloat16_step_agrees_with_float32(tiny_config):
  """The loss within 0.1%; the gradient of the trained parameters within 5% of its norm
  (bfloat16 keeps 8 bits of mantissa: 0.4% a rounding, compounded over the layers), and each
  parameter's within 5% of its own norm or, for the scalar gates, whose gradient is a sum
  over the batch of terms that mostly cancel, within 1% of the whole gradient's norm. The
  loss and the gradients come out in float32."""
  batch = one_batch(tiny_config)
  results = {}
  for dtype, (model, train, frozen) in models(tiny_config).items():
    loss, _, grads = jax.jit(lambda t, f, m=model: step_lib.loss_and_grads(
        m, t, f, {"mix": batch}, "per_token"))(train, frozen)
    assert loss.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    results[dtype] = (float(loss), grads)
  (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
  assert abs(loss16 - loss32) < 1e-3 * loss32
  norm = lambda tree: float(optax.tree.norm(tree))
  whole = norm(grads32)
  assert norm(jax.tree.map(jnp.subtract, grads16, grads32)) < 0.05 * whole
  flat32 = jax.tree_util.tree_flatten_with_path(grads32)[0]
  for (path, g32), g16 in zip(flat32, jax.tree.leaves(grads16)):
    error = norm(g16 - g32)
    assert error < 0.05 * norm(g32) or error < 0.01 * whole, jax.tree_util.keystr(path)


def test_bfloat16_greedy_decoding_gives_float32_tokens(tmp_path, tiny_config):
  """Through `flamingo_jax.load`, which stores the frozen weights as the switch says."""
  images, tokens = interleaved_batch(tiny_config)
  prompts = tokens[:, :-4]
  _, params = flamingo_jax.create(tiny_config, jax.random.key(0))
  flamingo_jax.save(tmp_path / "ckpt", open_gates(params), tiny_config)
  decoded = {}
  for precision in PRECISIONS:
    model, params, config = flamingo_jax.load(tmp_path / "ckpt", switched(precision))
    frozen = trainable_lib.split(params, config.model.trainable)[1]
    assert dtypes(frozen) == {precision}
    decoded[precision] = np.asarray(
        generate(model, params, encode(model, params, images), prompts, 6))
  np.testing.assert_array_equal(decoded["bfloat16"], decoded["float32"])
