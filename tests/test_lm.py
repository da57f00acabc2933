"""The decoder-only LM family: cache decoding, padding, config switches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.lm import DecodeState, DecoderLM, LMConfig
from flamingo_jax.lm.induction import repeated_spans

FAMILIES = {
    "llama_gqa": dict(norm="rms", activation="silu", gated_mlp=True, position="rope",
                      num_kv_heads=2),
    "qwen2_bias": dict(norm="rms", activation="silu", gated_mlp=True, position="rope",
                       qkv_bias=True, tie_embeddings=True),
    "gpt2": dict(norm="layer", activation="gelu_tanh", gated_mlp=False, position="learned",
                 qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True),
    "neox": dict(norm="layer", activation="gelu", gated_mlp=False, position="rope",
                 rope_fraction=0.25, parallel_residual=True, qkv_bias=True, out_bias=True,
                 mlp_bias=True),
    "chinchilla": dict(norm="rms", activation="gelu", gated_mlp=False, position="relative"),
}


def make_lm(family, **overrides):
  config = LMConfig(vocab_size=61, embed_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
                    num_extra_tokens=2, **(FAMILIES[family] | overrides))
  model = DecoderLM(config)
  tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, config.total_vocab)
  params = nn.meta.unbox(model.init(jax.random.key(1), tokens)["params"])
  # Random non-trivial values everywhere (biases and gains start at 0 / 1).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return model, params, tokens


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cached_decoding_equals_full_recomputation(family):
  model, params, tokens = make_lm(family)
  full = model.apply({"params": params}, tokens)
  assert full.shape == (2, 9, 63) and full.dtype == jnp.float32
  state = DecodeState.zeros(model.config, batch=2, length=12)
  logits, state = model.apply({"params": params}, tokens[:, :5],
                              jnp.broadcast_to(jnp.arange(5), (2, 5)), state,
                              method=DecoderLM.extend)
  pieces = [logits]
  for t in range(5, 9):
    logits, state = model.apply({"params": params}, tokens[:, t:t + 1], jnp.full((2, 1), t),
                                state, method=DecoderLM.extend)
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5)
  assert int(state.index) == 9


@pytest.mark.parametrize("family", ["llama_gqa", "chinchilla"])
def test_left_padding_is_invisible(family):
  """Padding positions (-1) are never attended to, so a left-padded prompt scores the same."""
  model, params, tokens = make_lm(family)
  plain = model.apply({"params": params}, tokens[:1, 3:])
  padded_tokens = tokens[:1].at[:, :3].set(0)
  positions = jnp.concatenate([jnp.full((1, 3), -1), jnp.arange(6)[None]], axis=1)
  padded = model.apply({"params": params}, padded_tokens, positions=positions)
  np.testing.assert_allclose(padded[:, 3:], plain, atol=2e-5)


def test_output_is_causal():
  model, params, tokens = make_lm("llama_gqa")
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 61)
  a = model.apply({"params": params}, tokens)
  b = model.apply({"params": params}, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])


def test_extra_tokens_have_their_own_rows():
  model, params, _ = make_lm("llama_gqa")
  assert params["extra_embedding"].shape == (2, 32)
  assert params["extra_unembedding"].shape == (32, 2)
  tokens = jnp.array([[61, 62, 5]])
  x = model.apply({"params": params}, tokens, jnp.zeros_like(tokens), method=DecoderLM.embed)
  np.testing.assert_array_equal(x[0, :2], params["extra_embedding"])


def test_chinchilla_layer_has_thirteen_d_squared_parameters():
  """Gopher / Chinchilla: 4 D^2 attention + D^2 relative-position projection + 8 D^2 MLP."""
  config = LMConfig(vocab_size=10, embed_dim=64, num_layers=1, num_heads=4, mlp_dim=256,
                    **FAMILIES["chinchilla"])
  params = nn.meta.unbox(jax.eval_shape(DecoderLM(config).init, jax.random.key(0),
                                        jnp.zeros((1, 3), jnp.int32))["params"]["layers_0"])
  kernels = sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params)
                if jax.tree_util.keystr(p).endswith("['kernel']"))
  assert kernels == 13 * 64 * 64  # query, key, value, out, relative: 5 D^2; MLP: 8 D^2.


def test_unknown_config_field_is_named():
  with pytest.raises(ValueError, match="num_layer"):
    LMConfig.from_dict(dict(vocab_size=1, embed_dim=1, num_layers=1, num_heads=1, mlp_dim=1,
                            num_layer=3))


def test_repeated_spans_weigh_only_what_copying_predicts():
  batch = repeated_spans(jax.random.key(0), batch_size=3, span=5, vocab_size=7, weight=0.5)
  tokens, targets, weights = (np.asarray(batch[k]) for k in ("tokens", "targets", "weights"))
  assert tokens.shape == targets.shape == weights.shape == (3, 9)
  sequence = np.concatenate([tokens, targets[:, -1:]], axis=1)
  np.testing.assert_array_equal(sequence[:, :5], sequence[:, 5:])
  np.testing.assert_array_equal(targets, sequence[:, 1:])
  assert sequence.min() >= 0 and sequence.max() < 7
  # Targets 6..9 follow a token seen before with its successor; the repeat's first does not.
  np.testing.assert_array_equal(weights, np.broadcast_to([0] * 5 + [1] * 4, (3, 9)))
  assert float(batch["loss_weight"]) == 0.5
