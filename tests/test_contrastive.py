"""The contrastive vision pretraining of the demo (the paper's appendix B.1.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.train import contrastive as contrastive_training
from flamingo_jax.vision import contrastive

from conftest import REPO


def test_loss_is_the_papers_two_terms():
  rng = np.random.default_rng(0)
  x, y = (rng.normal(size=(5, 8)) for _ in range(2))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  beta = 3.0
  s = x @ y.T * beta
  log_softmax = lambda a: a - np.log(np.exp(a).sum(axis=1, keepdims=True))
  expected = (-np.mean(np.diag(log_softmax(s))) - np.mean(np.diag(log_softmax(s.T))))
  loss, accuracy = contrastive.contrastive_loss(jnp.asarray(x), jnp.asarray(y),
                                                jnp.log(beta))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert accuracy == np.mean(np.argmax(s, axis=1) == np.arange(5))
  aligned, accuracy = contrastive.contrastive_loss(jnp.asarray(x), jnp.asarray(x), 5.0)
  assert accuracy == 1.0 and aligned < 0.01


@pytest.fixture(scope="module")
def demo_config(demo_vocabulary):
  config = flamingo_jax.load_config(str(REPO / "configs" / "demo.py"))
  config.data.vocabulary = demo_vocabulary
  config.contrastive.update(num_steps=40, batch_size=32, log_every=10, warmup_steps=5)
  return config


def test_text_embeddings_ignore_padding_and_are_unit_norm(demo_config):
  c = demo_config.contrastive
  encoder = contrastive.DualEncoder(
      demo_config.model.vision,
      contrastive.text_lm_config(demo_config.model.lm.vocab_size, **c.text), c.embed_dim)
  images = jnp.zeros((2, 32, 32, 3))
  tokens = jnp.array([[5, 6, 7, 0, 0, 0], [9, 8, 0, 0, 0, 0]])
  params = encoder.init(jax.random.key(0), images, tokens)["params"]
  image_embeddings, text_embeddings, _ = encoder.apply({"params": params}, images, tokens)
  np.testing.assert_allclose(jnp.linalg.norm(image_embeddings, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(text_embeddings, axis=1), 1.0, rtol=1e-5)
  shorter = encoder.apply({"params": params}, tokens[:, :3], method="encode_texts")
  np.testing.assert_allclose(shorter, text_embeddings, atol=1e-5)


def test_pretraining_learns_to_match_synthetic_images_and_captions(demo_config):
  params, history = contrastive_training.train(demo_config)
  assert [h["step"] for h in history] == [10, 20, 30, 40]
  # log(32) = 3.47 a term at chance; 40 steps of batch 32 get well below it.
  assert history[0]["loss"] > 6.0 and history[-1]["loss"] < 0.7 * history[0]["loss"]
  assert history[-1]["accuracy"] > 2 / 32
  assert "vision_encoder" in params and "text_encoder" in params
