"""The paper's precision on the tiny model: bfloat16 activations (`model.dtype`) with the frozen
weights stored in bfloat16 (`train.frozen_dtype`), the trained ones and the optimiser in
float32, against the same computation in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flamingo_jax
from flamingo_jax.decode import encode, generate
from flamingo_jax.flamingo import trainable as trainable_lib
from flamingo_jax.train import step as step_lib

from test_flamingo import interleaved_batch, open_gates


def models(tiny_config):
  """{dtype name: (model, trainable params, frozen params)}: one set of weights, the frozen
  ones stored in float32 or in bfloat16."""
  out = {}
  params = None
  for dtype in ("float32", "bfloat16"):
    config = tiny_config.copy_and_resolve_references()
    config.model.dtype = dtype
    model, fresh = flamingo_jax.create(config, jax.random.key(0))
    params = open_gates(fresh) if params is None else params
    train, frozen = trainable_lib.split(params, config.model.trainable)
    out[dtype] = (model, train, jax.tree.map(lambda x: x.astype(dtype), frozen))
  return out


def test_a_bfloat16_step_agrees_with_float32(tiny_config):
  """The loss within 0.1%; the gradient of the trained parameters within 5% of its norm
  (bfloat16 keeps 8 bits of mantissa: 0.4% a rounding, compounded over the layers), and each
  parameter's within 5% of its own norm or, for the scalar gates, whose gradient is a sum
  over the batch of terms that mostly cancel, within 1% of the whole gradient's norm. The
  loss and the gradients come out in float32."""
  images, tokens = interleaved_batch(tiny_config)
  batch = {"images": images, "tokens": tokens[:, :-1], "targets": tokens[:, 1:],
           "weights": jnp.ones(tokens[:, 1:].shape, jnp.float32),
           "attach_to_next": jnp.zeros((2,), bool), "loss_weight": jnp.float32(1.0)}
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


def test_bfloat16_greedy_decoding_gives_float32_tokens(tiny_config):
  images, tokens = interleaved_batch(tiny_config)
  prompts = tokens[:, :-4]
  decoded = {}
  for dtype, (model, train, frozen) in models(tiny_config).items():
    params = trainable_lib.merge(train, frozen)
    decoded[dtype] = np.asarray(generate(model, params, encode(model, params, images), prompts,
                                         6))
  np.testing.assert_array_equal(decoded["bfloat16"], decoded["float32"])
