"""The attention-weights hook: every MultiHeadAttention sows its softmax probabilities into the
"intermediates" collection, for inspection (the few-shot colab's attention heatmaps). It must
change no output, and cost nothing when the collection is not mutable."""

import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.layers import attention


def grouped_rope_attention():
  """4 query heads over 2 key/value heads with RoPE; a random mask with one all-masked row."""
  module = attention.MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2, position="rope")
  q = jax.random.normal(jax.random.key(0), (2, 5, 16))
  kv = jax.random.normal(jax.random.key(1), (2, 7, 16))
  mask = jax.random.bernoulli(jax.random.key(2), 0.6, (2, 1, 5, 7)).at[:, :, :, 0].set(True)
  mask = mask.at[1, :, 3].set(False)
  positions = (jnp.broadcast_to(jnp.arange(5), (2, 5)), jnp.broadcast_to(jnp.arange(7), (2, 7)))
  params = module.init(jax.random.key(3), q, kv, mask, *positions)
  return module, params, (q, kv, mask, *positions)


def test_weights_are_a_softmax_over_the_allowed_keys():
  module, params, args = grouped_rope_attention()
  out, state = module.apply(params, *args, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, 4, 5, 7)  # [B, H, Lq, Lk]
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)
  mask = np.broadcast_to(np.asarray(args[2]), weights.shape)
  allowed_rows = mask.any(axis=-1, keepdims=True)
  assert np.all(np.where(~mask & allowed_rows, weights, 0.0) == 0.0)
  # They are the weights the output was computed with.
  plain = module.apply(params, *args)
  np.testing.assert_array_equal(out, plain)


def test_nothing_is_kept_unless_the_collection_is_mutable():
  module, params, args = grouped_rope_attention()
  apply = lambda p: module.apply(p, *args)
  out = apply(params)
  # The compiled function returns the output alone: the sown weights are dropped at trace time.
  assert [a.shape for a in jax.make_jaxpr(apply)(params).out_avals] == [out.shape]


def test_gated_cross_attention_weights_follow_the_image_causal_mask(tiny_config, tiny_model):
  model, params = tiny_model
  c = tiny_config.model
  img, eoc = c.media_token_id, c.eoc_token_id
  tokens = jnp.asarray([[5, img, 6, 7, eoc, img, 8, 9]], jnp.int32)
  images = jax.random.normal(jax.random.key(0), (1, 2, 1, 32, 32, 3))
  logits, state = model.apply({"params": params}, images, tokens, mutable=["intermediates"])
  np.testing.assert_array_equal(logits, model.apply({"params": params}, images, tokens))
  (weights,) = state["intermediates"]["gated_xattn_0"]["attention"]["attention_weights"]
  r = c.resampler.num_latents
  assert weights.shape == (1, c.xattn.num_heads, 8, 2 * r)  # Keys: both images' latents.
  np.testing.assert_allclose(weights[0, :, 1:5, :r].sum(axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(weights[0, :, 5:, r:].sum(axis=-1), 1.0, atol=1e-6)
