"""Attention, positions and MLP building blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.layers import attention, linear, mlp, norms


def test_grouped_query_attention_equals_attention_with_repeated_kv_heads():
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(kq, (2, 5, 6, 8))
  k = jax.random.normal(kk, (2, 7, 2, 8))
  v = jax.random.normal(kv, (2, 7, 2, 8))
  mask = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 1, 5, 7))
  grouped = attention.dot_product_attention(q, k, v, mask)
  repeated = attention.dot_product_attention(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2),
                                             mask)
  np.testing.assert_allclose(grouped, repeated, atol=1e-6)
  reference = jax.nn.dot_product_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(grouped, reference, atol=1e-5)


def test_rotary_scores_depend_only_on_distance():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))
  def score(pq, pk):
    rq = attention.rotary_embedding(q, jnp.array([[pq]]), attention.Rope())
    rk = attention.rotary_embedding(k, jnp.array([[pk]]), attention.Rope())
    return float(jnp.sum(rq * rk))
  assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
  # Rotation preserves the norm.
  rq = attention.rotary_embedding(q, jnp.array([[12]]), attention.Rope())
  np.testing.assert_allclose(jnp.linalg.norm(rq), jnp.linalg.norm(q), rtol=1e-6)


def test_partial_rotary_leaves_the_tail_of_each_head_alone():
  x = jax.random.normal(jax.random.key(0), (1, 3, 2, 8))
  out = attention.rotary_embedding(x, jnp.arange(3)[None], attention.Rope(fraction=0.5))
  np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
  assert not np.allclose(out[:, 1:, :, :4], x[:, 1:, :, :4])


def test_relative_attention_is_translation_invariant():
  """Transformer-XL attention sees only distances, so shifting all positions changes nothing."""
  layer = attention.MultiHeadAttention(num_heads=2, head_dim=4, position="relative")
  x = jax.random.normal(jax.random.key(0), (1, 5, 8))
  pos = jnp.arange(5)[None]
  mask = (pos[:, None, :, None] >= pos[:, None, None, :])
  params = layer.init(jax.random.key(1), x, x, mask, pos, pos)
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
  out = layer.apply(params, x, x, mask, pos, pos)
  shifted = layer.apply(params, x, x, mask, pos + 11, pos + 11)
  np.testing.assert_allclose(out, shifted, atol=1e-5)


@pytest.mark.parametrize("num_in", [1, 2])
def test_flat_matmul_is_the_tensor_product(num_in):
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5))
  kernel = jax.random.normal(jax.random.key(1), (4, 5, 6)[2 - num_in:])
  np.testing.assert_allclose(linear.flat_matmul(x, kernel, num_in),
                             jnp.tensordot(x, kernel, axes=num_in), rtol=1e-5, atol=1e-5)


def test_dense_weight_gradient_needs_no_transposed_copy():
  """The point of flat_matmul: a dense layer on [B, L, D] differentiates without a transpose."""
  layer = mlp.Mlp(64, "gelu")
  x = jnp.ones((3, 8, 16))
  params = layer.init(jax.random.key(0), x)
  grad = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))
  hlo = jax.jit(grad).lower(params).compile().as_text()
  assert " transpose(" not in hlo


def test_squared_relu():
  x = jnp.array([-2.0, 0.0, 3.0])
  np.testing.assert_array_equal(mlp.activation("squared_relu")(x), [0.0, 0.0, 9.0])


@pytest.mark.parametrize("bad", ["batch", "nonsense"])
def test_unknown_names_are_rejected_with_the_name(bad):
  with pytest.raises(ValueError, match=bad):
    mlp.activation(bad)
  with pytest.raises(ValueError, match=bad):
    norms.make_norm(bad, eps=1e-5)


def test_bfloat16_attention_scores_are_not_rounded_before_the_softmax():
  """bfloat16 q and k: the weights equal float32 arithmetic on the same values, which a score
  rounded to bfloat16 (8 significant bits; logits of ~30 move by ~0.1) would not."""
  q = (4 * jax.random.normal(jax.random.key(0), (1, 6, 2, 16))).astype(jnp.bfloat16)
  k = (4 * jax.random.normal(jax.random.key(1), (1, 9, 2, 16))).astype(jnp.bfloat16)
  mask = jnp.ones((1, 1, 6, 9), bool)
  weights = attention.attention_weights(q, k, mask)
  exact = attention.attention_weights(q.astype(jnp.float32), k.astype(jnp.float32), mask)
  np.testing.assert_allclose(weights, exact, atol=1e-5)


def dot_products(jaxpr):
  """The dot_general equations of a jaxpr and of every jaxpr nested in it (jnp.einsum is jitted)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from dot_products(sub)


def test_bfloat16_relative_position_scores_come_out_in_float32():
  """Transformer-XL's content and position scores (Lq = 5 queries, S = 7 keys) leave their
  einsums as float32, not as rounded bfloat16."""
  layer = attention.MultiHeadAttention(num_heads=2, head_dim=4, position="relative",
                                       dtype=jnp.bfloat16)
  q, kv = jnp.ones((1, 5, 8)), jnp.ones((1, 7, 8))
  q_pos, kv_pos = jnp.arange(5)[None], jnp.arange(7)[None]
  mask = jnp.ones((1, 1, 5, 7), bool)
  params = layer.init(jax.random.key(0), q, kv, mask, q_pos, kv_pos)
  jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, q, kv, mask, q_pos, kv_pos))(params).jaxpr
  # A score has a query (5) and a key (7) axis, in whatever order the einsum contracts them.
  scores = [eqn.outvars[0].aval for eqn in dot_products(jaxpr)
            if {5, 7} <= set(eqn.outvars[0].aval.shape)]
  assert len(scores) == 2, scores  # (q + u).k and (q + v).W_r r.
  assert all(aval.dtype == jnp.float32 for aval in scores), scores


@pytest.mark.parametrize("position", ["rope", "alibi", "relative", "none"])
def test_fused_attention_equals_materialized(position):
  """attention_kind="fused" (jax.nn.dot_product_attention) gives the materialised weights'
  output within float32 rounding, through the full pass and the decoding cache's: grouped-query
  heads, each position scheme's bias, a causal mask with left padding. (A padding query, which
  sees no key, is left out: what it gets is never read, and a gated block zeroes such rows.)"""
  kw = dict(num_heads=6, head_dim=8, num_kv_heads=2, position=position)
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  positions = jnp.array([[0, 1, 2, 3, 4, 5, 6], [-1, -1, 0, 1, 2, 3, 4]])
  kv = positions[:, None, :]
  mask = ((kv >= 0) & (kv <= positions[:, :, None]))[:, None]
  seen = np.asarray(positions >= 0)
  materialized = attention.MultiHeadAttention(**kw)
  fused = attention.MultiHeadAttention(**kw, attention_kind="fused")
  params = materialized.init(jax.random.key(1), x, x, mask, positions, positions)
  out = [np.asarray(m.apply(params, x, x, mask, positions, positions))[seen]
         for m in (materialized, fused)]
  np.testing.assert_allclose(out[1], out[0], atol=2e-6)
  cache = attention.KVCache.zeros(2, 9, 2, 8)
  kv_positions = jnp.pad(positions, ((0, 0), (0, 2)), constant_values=-1)
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, 2)))
  step = [np.asarray(m.apply(params, x, mask, positions, kv_positions, cache, 0,
                             method=attention.MultiHeadAttention.extend)[0])[seen]
          for m in (materialized, fused)]
  np.testing.assert_allclose(step[1], step[0], atol=2e-6)
  np.testing.assert_allclose(step[0], out[0], atol=2e-6)
