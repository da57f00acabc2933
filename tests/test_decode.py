"""Cached decoding against full recomputation: beam search, batches of prompts of different
lengths, sampling filters and candidate scoring."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.decode import (beam_search, candidate_log_likelihoods, encode, generate,
                                 left_pad, right_pad)
from flamingo_jax.decode.beam import beam_search_from_prefill
from flamingo_jax.decode.generate import (filter_logits, generate_from_prefill, prefill,
                                          visual_tokens)

from test_flamingo import interleaved_batch, open_gates

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def setup(tiny_config, tiny_model):
  """(model, params with open gates, images [2, 3, ...], their visual tokens, prompts [2, L],
  a stop token that greedy decoding of prompt 0 emits at its third step)."""
  model, params = tiny_model
  params = open_gates(params)
  images, tokens = interleaved_batch(tiny_config)
  visual = encode(model, params, images)
  prompts = tokens[:, :-4]
  stop = int(generate(model, params, visual, prompts, 3)[0, 2])
  return model, params, images, visual, prompts, stop


@functools.partial(jax.jit, static_argnames="model")
def full_log_probs(model, params, images, tokens):
  """log softmax of the full (uncached) forward pass: [B, L, V]."""
  return jax.nn.log_softmax(model.apply({"params": params}, images, tokens))


def reference_beam_search(model, params, images, prompts, beam_size, length_penalty, stop):
  """The beam search of flamingo_jax.decode.beam written out in numpy, every step's
  log-probabilities from a full forward pass over prompt + hypothesis (no cache)."""
  batch, length = prompts.shape
  k, rows = beam_size, np.repeat(np.arange(batch), beam_size)
  images = images[rows]
  live = np.full((batch, k, NEW_TOKENS), stop, np.int64)
  live_scores = np.where(np.arange(k) == 0, 0.0, -np.inf)[None].repeat(batch, 0)
  done, done_scores = live.copy(), np.full((batch, k), -np.inf)
  for t in range(NEW_TOKENS):
    # Later slots hold placeholders; causality keeps them out of position length + t - 1.
    sequences = np.concatenate([np.asarray(prompts)[rows], live.reshape(batch * k, -1)], 1)
    log_probs = np.asarray(full_log_probs(model, params, images, jnp.asarray(sequences, jnp.int32)))
    log_probs = log_probs[:, length + t - 1].reshape(batch, k, -1)
    vocab = log_probs.shape[-1]
    for b in range(batch):
      candidates = (live_scores[b, :, None] + log_probs[b]).reshape(-1)
      order = np.argsort(-candidates, kind="stable")[:2 * k]
      new_live, new_scores = [], []
      pool = list(zip(done_scores[b], done[b]))
      for index in order:
        seq = live[b, index // vocab].copy()
        seq[t] = index % vocab
        if seq[t] == stop:
          pool.append((candidates[index] / (t + 1) ** length_penalty, seq))
        else:
          new_live.append(seq)
          new_scores.append(candidates[index])
      pool.sort(key=lambda entry: -entry[0])
      done_scores[b], done[b] = [s for s, _ in pool[:k]], [q for _, q in pool[:k]]
      live[b], live_scores[b] = new_live[:k], new_scores[:k]
  final = []
  for b in range(batch):
    pool = list(zip(done_scores[b], done[b])) + [
        (s / NEW_TOKENS ** length_penalty, q) for s, q in zip(live_scores[b], live[b])]
    pool.sort(key=lambda entry: -entry[0])
    final.append(pool[:k])
  return (np.array([[q for _, q in pool] for pool in final]),
          np.array([[s for s, _ in pool] for pool in final]))


@pytest.mark.parametrize("beam_size,length_penalty", [(2, 1.0), (3, 0.0)])
def test_cached_beam_search_equals_full_recomputation(setup, beam_size, length_penalty):
  model, params, images, visual, prompts, stop = setup
  seqs, scores = beam_search(model, params, visual, prompts, NEW_TOKENS, beam_size=beam_size,
                             length_penalty=length_penalty, stop_token=stop)
  expected_seqs, expected_scores = reference_beam_search(model, params, images, prompts,
                                                         beam_size, length_penalty, stop)
  np.testing.assert_array_equal(seqs, expected_seqs)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-4)
  assert (seqs == stop).any()  # The stop rule was exercised.


def test_beam_size_one_is_greedy(setup):
  model, params, images, visual, prompts, stop = setup
  for stop_token in (None, stop):
    seqs, _ = beam_search(model, params, visual, prompts, NEW_TOKENS, beam_size=1,
                          length_penalty=0.0, stop_token=stop_token)
    greedy = generate(model, params, visual, prompts, NEW_TOKENS, stop_token=stop_token)
    np.testing.assert_array_equal(seqs[:, 0], greedy)


def test_decoding_from_a_prefill_is_decoding(setup):
  """`prefill`, then `generate_from_prefill` / `beam_search_from_prefill` (what the benchmark
  times apart: the prompt read, then the cached steps) give `generate`'s and
  `beam_search`'s outputs."""
  model, params, _, visual, prompts, stop = setup
  prefilled = jax.jit(lambda p, v, t: prefill(model, p, v, t, None, NEW_TOKENS - 1))(
      params, visual, prompts)
  np.testing.assert_array_equal(
      generate_from_prefill(model, params, *prefilled, NEW_TOKENS, stop_token=stop),
      generate(model, params, visual, prompts, NEW_TOKENS, stop_token=stop))
  for ours, whole in zip(
      beam_search_from_prefill(model, params, prompts, *prefilled, NEW_TOKENS, beam_size=3,
                               stop_token=stop),
      beam_search(model, params, visual, prompts, NEW_TOKENS, beam_size=3, stop_token=stop)):
    np.testing.assert_array_equal(ours, whole)


def test_larger_beams_never_score_below_greedy(setup):
  """Scores of the greedy sequences (up to and including the stop token), recomputed with
  candidate scoring, never beat the beam's best."""
  model, params, images, visual, prompts, stop = setup
  greedy = np.asarray(generate(model, params, visual, prompts, NEW_TOKENS, stop_token=stop))
  ends = [list(row).index(stop) + 1 if stop in row else NEW_TOKENS for row in greedy]
  candidates, mask = right_pad([row[:end] for row, end in zip(greedy, ends)])
  log_likelihood = np.diagonal(candidate_log_likelihoods(model, params, visual, prompts,
                                                         candidates, mask))
  for beam_size in (2, 4):
    _, scores = beam_search(model, params, visual, prompts, NEW_TOKENS, beam_size=beam_size,
                            length_penalty=1.0, stop_token=stop)
    assert np.all(scores[:, 0] >= log_likelihood / np.array(ends) - 1e-5)


def test_prompts_of_different_lengths_decode_as_they_would_alone(setup):
  model, params, images, visual, prompts, stop = setup
  rows = [list(np.asarray(prompts[0, :9])), list(np.asarray(prompts[1]))]
  tokens, positions = left_pad(rows)
  assert (positions[0, :tokens.shape[1] - 9] == -1).all()
  together = generate(model, params, visual, tokens, NEW_TOKENS, positions=positions)
  beams, _ = beam_search(model, params, visual, tokens, NEW_TOKENS, beam_size=2,
                         positions=positions, stop_token=stop)
  for b, row in enumerate(rows):
    alone = jnp.asarray([row], jnp.int32)
    np.testing.assert_array_equal(together[b], generate(model, params, visual[b:b + 1], alone,
                                                        NEW_TOKENS)[0])
    np.testing.assert_array_equal(beams[b], beam_search(
        model, params, visual[b:b + 1], alone, NEW_TOKENS, beam_size=2, stop_token=stop)[0][0])


def test_a_batch_of_eight_prompts_of_different_lengths_decodes_as_each_alone(setup):
  # Eight prompts cut from the two rows at different lengths, each with its own images: greedy
  # tokens, beams (3) and candidate scores of the batch of 8 equal those of batches of 1.
  model, params, images, visual, prompts, stop = setup
  cuts = [5, 9, 13, 17, 8, 12, 15, 18]
  rows = [list(np.asarray(prompts[i % 2, :cut])) for i, cut in enumerate(cuts)]
  batch_images = jnp.flip(images, axis=1)[jnp.asarray([i % 2 for i in range(8)])]
  batch_images = batch_images * (1 + 0.1 * jnp.arange(8))[:, None, None, None, None, None]
  batch_visual = encode(model, params, batch_images)
  tokens, positions = left_pad(rows)
  greedy = generate(model, params, batch_visual, tokens, NEW_TOKENS, positions=positions,
                    stop_token=stop)
  beams, beam_scores = beam_search(model, params, batch_visual, tokens, NEW_TOKENS,
                                   beam_size=3, positions=positions, stop_token=stop)
  candidates, mask = right_pad([[5, 17, 200], [9], [100, 3]])
  scores = candidate_log_likelihoods(model, params, batch_visual, tokens, candidates, mask,
                                     positions)
  assert len({tuple(np.asarray(g)) for g in greedy}) > 2  # The rows do decode differently.
  for b, row in enumerate(rows):
    # Each row's images encoded alone too: the visual tokens are batch invariant as well.
    alone, row_visual = jnp.asarray([row], jnp.int32), encode(model, params, batch_images[b:b + 1])
    np.testing.assert_array_equal(greedy[b], generate(model, params, row_visual, alone,
                                                      NEW_TOKENS, stop_token=stop)[0])
    alone_beams, alone_scores = beam_search(model, params, row_visual, alone, NEW_TOKENS,
                                            beam_size=3, stop_token=stop)
    np.testing.assert_array_equal(beams[b], alone_beams[0])
    np.testing.assert_allclose(beam_scores[b], alone_scores[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[b], candidate_log_likelihoods(
        model, params, row_visual, alone, candidates, mask)[0], rtol=1e-5, atol=1e-4)


def test_media_encoding_compiles_without_ynnpack_and_gives_the_models_tokens(setup):
  """`encode` leaves out the YNNPACK dots that XLA:CPU uses by default (slower on the tower's
  matmuls: docs/design.md, "Decoding"), and computes what the model's own encoding computes."""
  model, params, images, visual, _, _ = setup
  own = jax.jit(lambda p, x: visual_tokens(model, p, x))
  assert "__ynn_fusion" in own.lower(params, images).compile().as_text()
  assert "__ynn_fusion" not in encode.lower(model, params, images).compile().as_text()
  np.testing.assert_allclose(visual, own(params, images), atol=1e-5)


def test_candidate_log_likelihoods_equal_the_full_forward(setup):
  model, params, images, visual, prompts, _ = setup
  candidates = [[5, 17, 200], [9], [100, 3]]
  tokens, mask = right_pad(candidates)
  scores = candidate_log_likelihoods(model, params, visual, prompts, tokens, mask)
  length = prompts.shape[1]
  for c, candidate in enumerate(candidates):
    full = jnp.concatenate([prompts, jnp.asarray([candidate] * 2, jnp.int32)], axis=1)
    log_probs = full_log_probs(model, params, images, full)
    expected = sum(log_probs[:, length + j - 1, token] for j, token in enumerate(candidate))
    np.testing.assert_allclose(scores[:, c], expected, atol=2e-4)


def test_filters_keep_the_top_k_and_the_nucleus():
  probs = np.array([[0.5, 0.05, 0.3, 0.15]])
  logits = jnp.log(jnp.asarray(probs))
  kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [True, False, True, False]
  # 0.5 < 0.7, then 0.5 + 0.3 reaches it: the nucleus is {0, 2}. At 0.9 it adds token 3.
  assert kept(top_p=0.7) == [True, False, True, False]
  assert kept(top_p=0.9) == [True, False, True, True]
  assert kept(top_p=0.4) == [True, False, False, False]
  np.testing.assert_allclose(filter_logits(logits, temperature=2.0), logits / 2.0)


def test_sampling_follows_the_filtered_distribution(setup):
  """Samples of the tiny model's first new token: top_k=1 is greedy; with top_k=3 the
  frequencies match the renormalised top 3 of the model's distribution."""
  model, params, images, visual, prompts, _ = setup
  first = lambda **kw: generate(model, params, visual, prompts, 1, **kw)[:, 0]
  greedy = first()
  np.testing.assert_array_equal(first(temperature=1.0, top_k=1, rng=jax.random.key(1)), greedy)
  samples = np.stack([first(temperature=1.0, top_k=3, rng=jax.random.key(i)) for i in range(400)])
  log_probs = full_log_probs(model, params, images, prompts)[:, -1]
  for b in range(prompts.shape[0]):
    top = np.argsort(-np.asarray(log_probs[b]))[:3]
    expected = jax.nn.softmax(log_probs[b][top])
    observed = np.array([(samples[:, b] == t).mean() for t in top])
    assert set(samples[:, b]) <= set(top.tolist())
    np.testing.assert_allclose(observed, expected, atol=0.1)  # 4 standard errors at n = 400.
