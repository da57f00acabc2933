"""The Flamingo model: public interface, exactness at init, image-causal masking, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.flamingo import (Flamingo, FlamingoDecodeState, GatedCrossAttentionBlock,
                                   attached_media_index, cross_attention_mask, lm_config,
                                   media_index, next_attended)
from flamingo_jax.flamingo.model import xattn_layer_indices
from flamingo_jax.lm import DecoderLM


def interleaved_batch(config, rng_seed=0):
  """Two sequences, three images each, text before the first image and between images."""
  c = config.model
  img, eoc = c.media_token_id, c.eoc_token_id
  rng = np.random.default_rng(rng_seed)
  text = lambda n: list(rng.integers(0, c.lm.vocab_size, n))
  rows = [text(3) + [img] + text(4) + [eoc, img] + text(3) + [eoc, img] + text(2),
          [img] + text(5) + [eoc, img] + text(4) + [eoc, img] + text(2) + [eoc]]
  tokens = jnp.asarray(rows, jnp.int32)
  size = c.vision.image_size
  images = jnp.asarray(rng.normal(size=(2, 3, 1, size, size, 3)), jnp.float32)
  return images, tokens


def open_gates(params, value=0.8, noise=0.3):
  """Non-zero gates and perturbed weights, as after some training: at the 0.02-scale
  initialisation, an image's influence on far-away tokens is below float32 resolution."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(42), len(leaves))
  return jax.tree.unflatten(tree, [
      jnp.full_like(x, value) if jax.tree_util.keystr(path).endswith("_gate']")
      else x + noise * jax.random.normal(k, x.shape, x.dtype) * jnp.std(x)
      for (path, x), k in zip(leaves, keys)])


def test_public_interface(tiny_config, tiny_model):
  model, params = tiny_model
  images, tokens = interleaved_batch(tiny_config)
  logits = model.apply({"params": params}, images, tokens)
  c = tiny_config.model
  assert logits.shape == (2, tokens.shape[1], c.lm.vocab_size + 2)
  assert logits.dtype == jnp.float32
  assert c.media_token_id == c.lm.vocab_size and c.eoc_token_id == c.lm.vocab_size + 1
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))


def test_init_logits_equal_the_frozen_lm(tiny_config, tiny_model, tiny_forward):
  """tanh(0) gates: at initialisation Flamingo computes exactly the frozen LM."""
  model, params = tiny_model
  images, tokens = interleaved_batch(tiny_config)
  flamingo_logits = tiny_forward(params, images, tokens)
  lm = DecoderLM(lm_config(tiny_config.model))
  lm_logits = lm.apply({"params": params["lm"]}, tokens)
  assert float(jnp.abs(flamingo_logits - lm_logits).max()) < 1e-6
  # With open gates the images do matter, so the equality above is not vacuous.
  opened = tiny_forward(open_gates(params), images, tokens)
  assert float(jnp.abs(opened - lm_logits).max()) > 1e-3


def test_media_index_and_mask():
  tokens = jnp.array([[5, 9, 5, 5, 9, 5, 5]])  # 9 is <image>
  np.testing.assert_array_equal(media_index(tokens, 9), [[-1, 0, 0, 0, 1, 1, 1]])
  # Continuing a decoding state whose 2 media were seen, the second attended.
  np.testing.assert_array_equal(
      media_index(tokens, 9, seen=jnp.array([2]), attended=jnp.array([1])), [[1, 2, 2, 2, 3, 3, 3]])
  mask = cross_attention_mask(media_index(tokens, 9), num_media=2, tokens_per_medium=3)
  assert mask.shape == (1, 1, 7, 6)
  np.testing.assert_array_equal(mask[0, 0, 0], [0] * 6)
  np.testing.assert_array_equal(mask[0, 0, 2], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(mask[0, 0, 5], [0, 0, 0, 1, 1, 1])
  every = cross_attention_mask(media_index(tokens, 9), 2, 3, mode="all_previous")
  np.testing.assert_array_equal(every[0, 0, 5], [1] * 6)
  with pytest.raises(ValueError, match="sideways"):
    cross_attention_mask(media_index(tokens, 9), 2, 3, mode="sideways")


def test_a_reset_token_hides_the_image_until_the_next():
  """IDEFICS at an EOS (7) in a packed sequence: the EOS still sees the image, the text after it
  none until the next <image> (9), and a chunk after a reset carries it."""
  tokens = jnp.array([[5, 9, 5, 7, 5, 5, 9, 5]])
  index = media_index(tokens, 9, reset_token_id=7)
  np.testing.assert_array_equal(index, [[-1, 0, 0, 0, -1, -1, 1, 1]])
  np.testing.assert_array_equal(media_index(tokens, 9), [[-1, 0, 0, 0, 0, 0, 1, 1]])
  first, second = tokens[:, :4], tokens[:, 4:]
  head = media_index(first, 9, reset_token_id=7)
  tail = media_index(second, 9, 7, seen=jnp.array([1]),
                     attended=next_attended(first, head, reset_token_id=7))
  np.testing.assert_array_equal(jnp.concatenate([head, tail], 1), index)
  np.testing.assert_array_equal(next_attended(tokens[:, :5], index[:, :5], 7), [-1])


def gated_block_outputs(visual, x, tokens):
  block = GatedCrossAttentionBlock(num_heads=2, head_dim=8, mlp_ratio=4, activation="squared_relu",
                                   kv_norm=True, norm_eps=1e-5)
  mask = cross_attention_mask(media_index(tokens, 9), visual.shape[1] // 4, 4)
  params = block.init(jax.random.key(0), x, visual, mask)["params"]
  params = dict(params, attention_gate=jnp.array(1.0), ffw_gate=jnp.array(0.0))
  return block.apply({"params": params}, x, visual, mask)


def test_cross_attention_sees_only_the_most_recent_image():
  tokens = jnp.array([[5, 5, 9, 5, 5, 9, 5, 5]])
  x = jax.random.normal(jax.random.key(1), (1, 8, 16))
  visual = jax.random.normal(jax.random.key(2), (1, 8, 12))  # 2 media x 4 tokens
  out = gated_block_outputs(visual, x, tokens)
  # Tokens before the first image: exactly zero cross-attention (attention gate is 1, FFW's 0).
  np.testing.assert_array_equal(out[:, :2], x[:, :2])
  assert not np.allclose(out[:, 2:], x[:, 2:])
  # Changing image 0 leaves the tokens of image 1 untouched, and vice versa.
  other0 = visual.at[:, :4].set(jax.random.normal(jax.random.key(3), (1, 4, 12)))
  out0 = gated_block_outputs(other0, x, tokens)
  np.testing.assert_array_equal(out0[:, 5:], out[:, 5:])
  assert not np.allclose(out0[:, 2:5], out[:, 2:5])
  other1 = visual.at[:, 4:].set(jax.random.normal(jax.random.key(4), (1, 4, 12)))
  out1 = gated_block_outputs(other1, x, tokens)
  np.testing.assert_array_equal(out1[:, :5], out[:, :5])


def test_logits_before_an_image_token_do_not_depend_on_that_image(tiny_config, tiny_model,
                                                                  tiny_forward):
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  base = tiny_forward(params, images, tokens)
  third = int(np.flatnonzero(np.asarray(tokens[0]) == tiny_config.model.media_token_id)[2])
  changed = images.at[0, 2].set(-images[0, 2])
  out = tiny_forward(params, changed, tokens)
  np.testing.assert_array_equal(out[0, :third], base[0, :third])
  assert not np.allclose(out[0, third:], base[0, third:])
  np.testing.assert_array_equal(out[1], base[1])
  # Earlier images reach later tokens through self-attention, even past a newer image.
  changed_first = images.at[0, 0].set(-images[0, 0])
  out = tiny_forward(params, changed_first, tokens)
  assert float(jnp.abs(out[0, third + 1:] - base[0, third + 1:]).max()) > 1e-6


def test_text_attached_to_the_next_image_attends_to_it():
  # [[1], IMG, [2], IMG, [3]]: "previous" reads 1 with no image, 2 with the first, 3 with the
  # second; "next" reads 1 with the first, 2 with the second and 3 (after the last) with none.
  # An <image> token attends to its own image either way.
  tokens = jnp.array([[5, 9, 6, 6, 9, 7, 7]] * 2)  # 9 is <image>.
  index = attached_media_index(tokens, 9, jnp.array([False, True]))
  np.testing.assert_array_equal(index, [[-1, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, -1, -1]])
  np.testing.assert_array_equal(index[0], media_index(tokens, 9)[0])


def test_attach_to_next_changes_which_image_the_logits_depend_on(tiny_config, tiny_model):
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  second, third = np.flatnonzero(np.asarray(tokens[0]) == tiny_config.model.media_token_id)[1:]
  changed = images.at[:, 2].set(-images[:, 2])
  forward = jax.jit(lambda images, attach: model.apply({"params": params}, images, tokens,
                                                       attach_to_next=attach))
  attach = jnp.array([True, False])
  base, out = forward(images, attach), forward(changed, attach)
  # Attached to the next image, the text between the second and third images reads the third;
  # nothing up to the second image's token sees it. The row left as "previous" is untouched
  # before its own third image.
  np.testing.assert_array_equal(out[0, :second + 1], base[0, :second + 1])
  assert float(jnp.abs(out[0, second + 1:third] - base[0, second + 1:third]).max()) > 1e-4
  third_1 = int(np.flatnonzero(np.asarray(tokens[1]) == tiny_config.model.media_token_id)[2])
  np.testing.assert_array_equal(out[1, :third_1], base[1, :third_1])
  # The default attaches to the previous image, as one False for every row does.
  np.testing.assert_allclose(model.apply({"params": params}, images, tokens),
                             forward(images, jnp.zeros(2, bool)), atol=1e-5)


def test_no_nan_for_text_only_sequences(tiny_config, tiny_model, tiny_forward):
  model, params = tiny_model
  images, _ = interleaved_batch(tiny_config)
  tokens = jnp.arange(12, dtype=jnp.int32)[None].repeat(2, 0)
  logits = tiny_forward(open_gates(params), images, tokens)
  assert bool(jnp.isfinite(logits).all())


def test_too_many_images_is_a_clear_error(tiny_config, tiny_model):
  model, params = tiny_model
  images, tokens = interleaved_batch(tiny_config)
  with pytest.raises(ValueError, match="3 <image> tokens .* only 2 media"):
    model.apply({"params": params}, images[:, :2], tokens)


def cached_logits(model, params, config, images, tokens):
  """The logits of `tokens` fed in chunks through Flamingo.extend: [B, L, V], and the state."""
  variables = {"params": params}
  visual = model.apply(variables, images, method=Flamingo.encode_media)
  media = model.apply(variables, visual, method=Flamingo.media_kv)
  state = FlamingoDecodeState.start(config.model, media, tokens.shape[1] + 2)
  pieces = []
  for start, stop in [(0, 4), (4, 5), (5, 11), (11, 12), (12, tokens.shape[1])]:
    positions = jnp.broadcast_to(jnp.arange(start, stop), (2, stop - start))
    logits, state = model.apply(variables, tokens[:, start:stop], positions, state,
                                method=Flamingo.extend)
    pieces.append(logits)
  return jnp.concatenate(pieces, axis=1), state


def test_cached_decoding_equals_full_forward(tiny_config, tiny_model):
  """Feeding the sequence in chunks, images included, gives the full forward's logits."""
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  full = model.apply({"params": params}, images, tokens)
  cached, state = cached_logits(model, params, tiny_config, images, tokens)
  # Exact structure, float32 rounding: a one-token chunk takes other CPU kernels (1e-4 seen).
  np.testing.assert_allclose(cached, full, atol=5e-4)
  np.testing.assert_array_equal(state.media_count, [3, 3])


def test_an_lm_sliding_window_holds_in_the_forward_and_the_cache(tiny_config, tiny_model):
  """A Mistral-style LM window of 4: the first 4 positions as without one, later ones not; the
  cached decoding masks the slots the window has passed as the full forward does."""
  config = tiny_config.copy_and_resolve_references()
  config.model.lm.sliding_window = 4
  model, _ = flamingo_jax.create(config, jax.random.key(0))
  plain_model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(config)
  full = model.apply({"params": params}, images, tokens)
  plain = plain_model.apply({"params": params}, images, tokens)
  np.testing.assert_allclose(full[:, :4], plain[:, :4], atol=1e-6)
  assert not np.allclose(full[:, 4:], plain[:, 4:], atol=1e-3)
  np.testing.assert_allclose(cached_logits(model, params, config, images, tokens)[0], full,
                             atol=5e-4)


def test_fused_attention_gives_the_same_model(tiny_config, tiny_model):
  """model.attention_kind="fused" (LM, gated blocks, resampler through
  jax.nn.dot_product_attention): the full pass and cached decoding give the materialised
  model's logits within float32 rounding, text before the first image (no image to attend)
  included."""
  config = tiny_config.copy_and_resolve_references()
  config.model.attention_kind = "fused"
  fused, _ = flamingo_jax.create(config, jax.random.key(0))
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(config)
  full = model.apply({"params": params}, images, tokens)
  np.testing.assert_allclose(fused.apply({"params": params}, images, tokens), full, atol=1e-4)
  np.testing.assert_allclose(cached_logits(fused, params, config, images, tokens)[0], full,
                             atol=5e-4)


def test_all_previous_media_mode_changes_the_model(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.xattn.media_mode = "all_previous"
  model, params = flamingo_jax.create(config, jax.random.key(0))
  last_model, _ = flamingo_jax.create(tiny_config, jax.random.key(0))
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  a = model.apply({"params": params}, images, tokens)
  b = last_model.apply({"params": params}, images, tokens)
  first = int(np.flatnonzero(np.asarray(tokens[0]) == tiny_config.model.media_token_id)[1])
  np.testing.assert_allclose(a[0, :first], b[0, :first], atol=1e-6)
  assert not np.allclose(a[0, first:], b[0, first:])


def test_gated_blocks_sit_before_every_kth_block_from_the_first(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  assert xattn_layer_indices(config.model) == (0, 2)  # The paper: starting from the first.
  config.model.xattn.start = 1                          # OpenFlamingo: (i + 1) % every == 0.
  assert xattn_layer_indices(config.model) == (1, 3)
  for name, every, count in [("flamingo_3b", 1, 24), ("flamingo_80b", 7, 12)]:
    big = flamingo_jax.load_config(name).model
    assert big.xattn.every == every and len(xattn_layer_indices(big)) == count
