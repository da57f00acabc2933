"""The public surface: load_config, create, save / load and greedy decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.decode import generate

from test_flamingo import interleaved_batch, open_gates


def test_load_config_by_path_and_by_name(tiny_config):
  by_name = flamingo_jax.load_config("tiny")
  assert by_name.to_dict() == tiny_config.to_dict()
  with pytest.raises(FileNotFoundError, match="no_such_config"):
    flamingo_jax.load_config("no_such_config")


def test_derived_fields_follow_overrides(tiny_config):
  config = flamingo_jax.load_config("tiny")
  config.model.lm.vocab_size = 300
  config.model.lm.num_heads = 8
  assert config.model.media_token_id == 300 and config.model.eoc_token_id == 301
  assert config.model.xattn.num_heads == 8


def test_save_and_load_round_trip(tmp_path, tiny_config, tiny_model):
  model, params = tiny_model
  params = open_gates(params)
  flamingo_jax.save(tmp_path / "ckpt", params, tiny_config)
  loaded_model, loaded_params, loaded_config = flamingo_jax.load(tmp_path / "ckpt")
  assert loaded_config.model.to_dict() == tiny_config.model.to_dict() | {
      "trainable": list(tiny_config.model.trainable)}
  jax.tree.map(np.testing.assert_array_equal, params, loaded_params)
  images, tokens = interleaved_batch(tiny_config)
  np.testing.assert_array_equal(
      jax.jit(loaded_model.apply)({"params": loaded_params}, images, tokens),
      jax.jit(model.apply)({"params": params}, images, tokens))


def test_load_rejects_a_directory_that_is_not_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    flamingo_jax.load(tmp_path)


def test_greedy_generation_matches_argmax_of_full_recomputation(tiny_config, tiny_model,
                                                               tiny_forward):
  """Each cached step picks the argmax that a full forward pass over the prompt and the tokens
  generated so far gives (one causal forward over the whole sequence checks every step)."""
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  generated = generate(model, params, images, tokens, 5)
  logits = tiny_forward(params, images, jnp.concatenate([tokens, generated], axis=1))
  length = tokens.shape[1]
  np.testing.assert_array_equal(jnp.argmax(logits[:, length - 1:-1], axis=-1), generated)


def test_greedy_generation_stops_at_the_stop_token(tiny_config, tiny_model):
  model, params = tiny_model
  images, tokens = interleaved_batch(tiny_config)
  free = generate(model, open_gates(params), images, tokens, 4)
  stop = int(free[0, 1])
  stopped = generate(model, open_gates(params), images, tokens, 4, stop_token=stop)
  np.testing.assert_array_equal(stopped[0, :2], free[0, :2])
  np.testing.assert_array_equal(stopped[0, 2:], [stop, stop])

