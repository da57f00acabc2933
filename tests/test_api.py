"""The public surface: load_config, create, save / load and greedy decoding."""

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax import sharding
from flamingo_jax.decode import encode, generate
from flamingo_jax.flamingo import trainable as trainable_lib

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
  # Overriding a derived field leaves the field it derives from.
  config.model.media_token_id = 7
  config.model.xattn.num_heads = 2
  assert config.model.lm.vocab_size == 300 and config.model.eoc_token_id == 301
  assert config.model.lm.num_heads == 8


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


@pytest.mark.parametrize("scan_layers", [False, True])
def test_load_onto_an_fsdp_by_tensor_mesh_gives_the_logits_of_one_device(
    tmp_path, tiny_config, tiny_model, scan_layers):
  """Every tensor lands on the 8-device mesh in the shards its logical axes give it, and the
  sharded model computes what the single-device one does."""
  _, params = tiny_model
  params = open_gates(params)
  flamingo_jax.save(tmp_path / "ckpt", params, tiny_config)
  config = tiny_config.copy_and_resolve_references()
  config.model.scan_layers = scan_layers
  config.mesh.update(data=1, fsdp=4, tensor=2)
  mesh = sharding.make_mesh(config.mesh)
  model, on_mesh, _ = flamingo_jax.load(tmp_path / "ckpt", config, mesh=mesh)
  one_model, on_one, _ = flamingo_jax.load(tmp_path / "ckpt", config)

  leaves = jax.tree.leaves(on_mesh)
  assert all(x.sharding.mesh == mesh for x in leaves)
  split = [x for x in leaves if not x.sharding.is_fully_replicated]
  assert {a for x in split for a in jax.tree.leaves(tuple(x.sharding.spec))} == {"fsdp", "tensor"}
  # The token embedding [V, D]: D over fsdp; a head projection's heads over tensor.
  assert any(x.addressable_shards[0].data.size == x.size // 8 for x in split)
  assert all(len(x.devices()) == 1 for x in jax.tree.leaves(on_one))

  images, tokens = interleaved_batch(config)
  with jax.set_mesh(mesh), flax.linen.logical_axis_rules(sharding.rules(config)):
    sharded = jax.jit(model.apply)({"params": on_mesh}, images, tokens)
  np.testing.assert_allclose(sharded, jax.jit(one_model.apply)({"params": on_one}, images, tokens),
                             atol=2e-5, rtol=1e-5)


def test_load_casts_the_frozen_parameters_only(tmp_path, tiny_config, tiny_model):
  _, params = tiny_model
  flamingo_jax.save(tmp_path / "ckpt", params, tiny_config)
  _, loaded, config = flamingo_jax.load(tmp_path / "ckpt", frozen_dtype="bfloat16")
  trainable, frozen = trainable_lib.split(loaded, config.model.trainable)
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_array_equal(
      jax.tree.leaves(frozen)[0],
      jax.tree.leaves(trainable_lib.split(params, config.model.trainable)[1])[0].astype(
          jnp.bfloat16))


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
  generated = generate(model, params, encode(model, params, images), tokens, 5)
  logits = tiny_forward(params, images, jnp.concatenate([tokens, generated], axis=1))
  length = tokens.shape[1]
  np.testing.assert_array_equal(jnp.argmax(logits[:, length - 1:-1], axis=-1), generated)


def test_greedy_generation_stops_at_the_stop_token(tiny_config, tiny_model):
  model, params = tiny_model
  images, tokens = interleaved_batch(tiny_config)
  params = open_gates(params)
  visual = encode(model, params, images)
  free = generate(model, params, visual, tokens, 4)
  stop = int(free[0, 1])
  stopped = generate(model, params, visual, tokens, 4, stop_token=stop)
  np.testing.assert_array_equal(stopped[0, :2], free[0, :2])
  np.testing.assert_array_equal(stopped[0, 2:], [stop, stop])

