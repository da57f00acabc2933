"""Scanned layers and rematerialisation compute what the unscanned, unrematerialised model does."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.decode import encode, generate
from flamingo_jax.flamingo import Flamingo, FlamingoDecodeState, trainable
from flamingo_jax.flamingo.scan import Layout, stack_layers, unstack_layers
from flamingo_jax.flamingo.factory import abstract_params_and_axes, build_model
from flamingo_jax.train import trainer as trainer_lib

from test_flamingo import interleaved_batch, open_gates


def variant(config, **model):
  config = config.copy_and_resolve_references()
  config.model.update(model)
  return config


def offset_config(tiny_config):
  """8 LM blocks, gated blocks before 1, 4 and 7: LM block 0 comes before the first gated block,
  units 0 and 1 are scanned, and unit 2 (gated block 2, LM block 7) is a shorter remainder."""
  config = variant(tiny_config)
  config.model.lm.num_layers = 8
  config.model.xattn.update(dict(every=3, start=1))
  return config


def offset_params(tiny_params):
  """Unscanned parameters of `offset_config`: the tiny model's blocks repeated, which is quicker
  than compiling another initialiser (`open_gates` then perturbs every copy differently)."""
  lm = tiny_params["lm"]
  return dict(tiny_params, lm=dict(lm, **{f"layers_{i}": lm[f"layers_{i % 4}"] for i in range(8)}),
              **{f"gated_xattn_{k}": tiny_params[f"gated_xattn_{k % 2}"] for k in range(3)})


@pytest.fixture(scope="module", params=["tiny", "offset"])
def layouts(request, tiny_config, tiny_model):
  """(unscanned config, scanned config, unscanned parameters with open gates)."""
  config, params = tiny_config, tiny_model[1]
  if request.param == "offset":
    config, params = offset_config(tiny_config), offset_params(params)
  return config, variant(config, scan_layers=True), open_gates(params)


@functools.partial(jax.jit, static_argnames="model")
def forward(model, params, images, tokens):
  return model.apply({"params": params}, images, tokens)


def test_scanned_logits_equal_unscanned(layouts):
  config, scanned_config, params = layouts
  stacked = stack_layers(params, scanned_config.model)
  # The converted parameters have exactly the tree the scanned model initialises.
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  expected, _ = abstract_params_and_axes(build_model(scanned_config), scanned_config)
  assert shapes(stacked) == shapes(expected)
  images, tokens = interleaved_batch(config)
  np.testing.assert_allclose(forward(build_model(scanned_config), stacked, images, tokens),
                             forward(build_model(config), params, images, tokens), atol=1e-5)


def test_unstack_inverts_stack(layouts):
  config, scanned_config, params = layouts
  stacked = stack_layers(params, scanned_config.model)
  assert stack_layers(params, config.model) is params  # Unscanned config: nothing to do.
  back = unstack_layers(stacked, scanned_config.model)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  with pytest.raises(ValueError, match="already have the scanned layout"):
    stack_layers(stacked, scanned_config.model)


def test_scanned_layout_and_logical_axes(tiny_config):
  config = variant(offset_config(tiny_config), scan_layers=True)
  layout = Layout.of(config.model)
  assert (list(layout.prefix), layout.num_scanned, list(layout.unit(2))) == ([0], 2, [7])
  assert layout.unscanned == [0, 7]
  params, specs = abstract_params_and_axes(build_model(config), config)
  assert set(params) == {"vision_encoder", "resampler", "lm", "scanned", "gated_xattn_2"}
  assert {k for k in params["lm"] if k.startswith("layers_")} == {"layers_0", "layers_7"}
  assert set(params["scanned"]) == {"gated_xattn", "layers_0", "layers_1", "layers_2"}
  assert params["scanned"]["gated_xattn"]["attention_gate"].shape == (2,)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=is_spec):
    scanned = jax.tree_util.keystr(path).startswith("['scanned']")
    assert (spec[:1] == ("layers",)) == scanned and spec.count("layers") == scanned, (path, spec)


def test_trainable_rule_selects_the_scanned_gated_blocks(tiny_config):
  config = offset_config(tiny_config)
  scanned_config = variant(config, scan_layers=True)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  params, _ = abstract_params_and_axes(build_model(scanned_config), scanned_config)
  train, frozen = trainable.split(params, scanned_config.model.trainable)
  assert set(train) == {"resampler", "lm", "scanned", "gated_xattn_2"}
  assert set(train["scanned"]) == {"gated_xattn"}
  assert set(train["lm"]) == {"extra_embedding", "extra_unembedding"}
  assert set(frozen["scanned"]) == {"layers_0", "layers_1", "layers_2"}
  params, _ = abstract_params_and_axes(build_model(config), config)
  unscanned_train, unscanned_frozen = trainable.split(params, config.model.trainable)
  assert (count(train), count(frozen)) == (count(unscanned_train), count(unscanned_frozen))


def trainable_grads(config, params, images, tokens):
  """Gradients of the next-token loss with respect to the trainable parameters."""
  model = build_model(config)
  train, frozen = trainable.split(params, config.model.trainable)

  def loss(train):
    logits = model.apply({"params": trainable.merge(train, frozen)}, images, tokens)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

  # Not vacuous: the blocks are rematerialised (jax.checkpoint's primitive is remat2).
  assert ("remat" in str(jax.make_jaxpr(loss)(train))) == (config.model.remat != "none")
  return jax.jit(jax.grad(loss))(train)


def test_remat_leaves_gradients_unchanged(tiny_config, tiny_model):
  params = open_gates(tiny_model[1])
  images, tokens = interleaved_batch(tiny_config)
  expected = trainable_grads(tiny_config, params, images, tokens)
  for remat, scan in [("dots", False), ("full", True)]:  # The paper configs: full, scanned.
    config = variant(tiny_config, remat=remat, scan_layers=scan)
    grads = trainable_grads(config, stack_layers(params, config.model), images, tokens)
    grads = unstack_layers(grads, config.model)
    assert jax.tree.structure(grads) == jax.tree.structure(expected)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=1e-5),
                 grads, expected)


@functools.partial(jax.jit, static_argnames=("model", "split"))
def decode_in_two_chunks(model, params, images, tokens, split):
  """Logits [B, L, V] of a prefill of tokens[:, :split], then the rest, through the KV caches."""
  variables = {"params": params}
  visual = model.apply(variables, images, method=Flamingo.encode_media)
  media = model.apply(variables, visual, method=Flamingo.media_kv)
  length = tokens.shape[1]
  state = FlamingoDecodeState.start(model.config, media, length)
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  pieces = []
  for chunk in (slice(0, split), slice(split, length)):
    logits, state = model.apply(variables, tokens[:, chunk], positions[:, chunk], state,
                                method=Flamingo.extend)
    pieces.append(logits)
  return jnp.concatenate(pieces, axis=1)


def test_scanned_decoding_equals_unscanned(tiny_config, tiny_model):
  """Cached decoding and greedy generation with scanned layers give the unscanned full forward's
  logits and argmaxes."""
  config = offset_config(tiny_config)
  scanned_config = variant(config, scan_layers=True)
  params = open_gates(offset_params(tiny_model[1]))
  stacked = stack_layers(params, scanned_config.model)
  model, scanned_model = build_model(config), build_model(scanned_config)
  images, tokens = interleaved_batch(config)
  full = forward(model, params, images, tokens)
  chunked = decode_in_two_chunks(scanned_model, stacked, images, tokens, split=9)
  # A cached call takes other CPU kernels than the full forward: float32 rounding (see
  # test_flamingo's cached decoding test).
  np.testing.assert_allclose(chunked, full, atol=5e-4)
  prompt = tokens.shape[1] - 6
  generated = generate(scanned_model, stacked, encode(scanned_model, stacked, images),
                       tokens[:, :prompt], 6)
  logits = forward(model, params, images, jnp.concatenate([tokens[:, :prompt], generated], 1))
  np.testing.assert_array_equal(jnp.argmax(logits[:, prompt - 1:-1], axis=-1), generated)


def test_checkpoints_store_the_unscanned_layout_and_load_into_either(tmp_path, tiny_config,
                                                                     tiny_model):
  """A scanned model's checkpoint is stored unscanned (what importers write), `load` gives it
  back scanned, and training with scanned layers reads an unscanned checkpoint's frozen
  parameters onto a mesh."""
  params = open_gates(tiny_model[1])
  scanned_config = variant(tiny_config, scan_layers=True)
  stacked = stack_layers(params, scanned_config.model)
  orbax_io.save(tmp_path / "scanned", stacked, scanned_config)
  on_disk = orbax_io.restore_unscanned(tmp_path / "scanned", jax.eval_shape(lambda: params))
  jax.tree.map(np.testing.assert_array_equal, on_disk, params)
  _, loaded, config = flamingo_jax.load(tmp_path / "scanned")
  assert config.model.scan_layers
  jax.tree.map(np.testing.assert_array_equal, loaded, stacked)

  flamingo_jax.save(tmp_path / "unscanned", params, tiny_config)
  scanned_config.train.frozen.update(dict(source="checkpoint", path=str(tmp_path / "unscanned")))
  scanned_config.mesh.update(dict(data=1, fsdp=2, tensor=1))
  trainer = trainer_lib.Trainer(scanned_config, jax.devices()[:2])
  train, frozen = trainer.initial_params()
  restored = jax.device_get(trainable.merge(train, frozen))
  jax.tree.map(np.testing.assert_array_equal, restored, stacked)
  # Placed as training places them: the scanned blocks' embed dimensions over fsdp.
  query = frozen["scanned"]["layers_0"]["attention"]["query"]["kernel"]
  assert query.sharding.spec[:2] == (None, "fsdp")
