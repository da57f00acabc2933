"""The model and loss of a vision tower's contrastive pretraining on image-text pairs (the
paper's appendix B.1.3, after ALIGN and CLIP), so that a Flamingo can freeze a tower that
already knows what its pictures show; flamingo_jax.train.contrastive trains them.

A `DualEncoder` pairs the vision tower of a Flamingo config with a small causal text
transformer (the LM's own blocks, read out at the last text token as CLIP's text tower is);
both map to L2-normalised embeddings, and the loss is the paper's two terms, image-to-text and
text-to-image softmax cross-entropy over the batch, with a learned inverse temperature.

    encoder = DualEncoder(config.model.vision, text_config)
    images, tokens = ...       # float32 [B, S, S, 3], int32 [B, L] (0 = padding)
    loss, accuracy = contrastive_loss(*encoder.apply({"params": params}, images, tokens))
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax.lm import LMConfig
from flamingo_jax.lm.model import DecoderLM, attention_mask
from flamingo_jax.vision import make_vision_encoder

# CLIP's initial temperature 0.07, as log(1 / 0.07).
INITIAL_LOG_SCALE = 2.6592


def text_lm_config(vocab_size: int, width: int, depth: int, num_heads: int,
                   max_length: int) -> LMConfig:
  """A pre-norm LLaMA-style block stack for the text tower."""
  return LMConfig(vocab_size=vocab_size, embed_dim=width, num_layers=depth, num_heads=num_heads,
                  mlp_dim=4 * width, norm="rms", activation="silu", gated_mlp=True,
                  position="rope", max_length=max_length, num_extra_tokens=0)


class DualEncoder(nn.Module):
  """(images [B, S, S, 3], tokens [B, L]) -> (image embeddings [B, E], text embeddings [B, E],
  log inverse temperature []). Token 0 is padding; a text is read out at its last token."""
  vision: ml_collections.ConfigDict
  text: LMConfig
  embed_dim: int = 64
  dtype: Any = jnp.float32

  def setup(self):
    self.vision_encoder = make_vision_encoder(self.vision, self.dtype)
    self.text_encoder = DecoderLM(self.text, self.dtype)
    self.image_norm = nn.LayerNorm(dtype=self.dtype)
    self.text_norm = nn.LayerNorm(dtype=self.dtype)
    self.image_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.text_projection = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.log_scale = self.param("log_scale", nn.initializers.constant(INITIAL_LOG_SCALE), ())

  def encode_images(self, images):
    """[B, S, S, 3] -> [B, E], unit norm: the mean of the tower's patch tokens, projected."""
    features = self.vision_encoder(images)
    return _unit(self.image_projection(self.image_norm(features.mean(axis=1))))

  def encode_texts(self, tokens):
    """[B, L] -> [B, E], unit norm: the causal stack's output at each text's last token."""
    valid = tokens != 0
    positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, -1).astype(jnp.int32)
    x = self.text_encoder.embed(tokens, positions)
    x = self.text_encoder.blocks(range(self.text.num_layers), x, positions,
                                 attention_mask(positions, positions))
    last = jnp.argmax(positions, axis=1)
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    return _unit(self.text_projection(self.text_norm(x)))

  def __call__(self, images, tokens):
    return self.encode_images(images), self.encode_texts(tokens), self.log_scale


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)


def contrastive_loss(image_embeddings, text_embeddings, log_scale):
  """The paper's loss (eq. in appendix B.1.3), averaged over the batch: -log softmax of each
  image's own text among the batch's texts, plus the same for each text among the images.
  Returns (loss, image-to-text top-1 accuracy)."""
  logits = image_embeddings @ text_embeddings.T * jnp.exp(log_scale)
  labels = jnp.arange(logits.shape[0])
  image_to_text = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1),
                                                labels[:, None], axis=1))
  text_to_image = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0),
                                                labels[None, :], axis=0))
  accuracy = jnp.mean(jnp.argmax(logits, axis=1) == labels)
  return image_to_text + text_to_image, accuracy

