"""Contrastive pretraining of a vision tower on image-text pairs (the paper's appendix B.1.3,
after ALIGN and CLIP), so that a Flamingo can freeze a tower that already knows what its
pictures show.

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
import optax

from flamingo_jax.data import mixtures
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
    x, _ = self.text_encoder.blocks(range(self.text.num_layers), x, positions, positions,
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


def train(config: ml_collections.ConfigDict, progress=None):
  """Pretrains the dual encoder of `config.model.vision` on `config.data`'s pair task named
  `config.contrastive.task`; returns (params, history [{step, loss, accuracy}]).

  config.contrastive: task, num_steps, batch_size, learning_rate, warmup_steps, log_every,
  embed_dim, text {width, depth, num_heads, max_length}.
  """
  c = config.contrastive
  data_config = config.copy_and_resolve_references()
  task = dict(data_config.data.tasks[c.task])
  data_config.data.tasks = {c.task: task | dict(batch_size=c.batch_size, weight=1.0)}
  data_config.data.strategy = "accumulate"
  iterator = mixtures.make_iterator(data_config)
  vocab_size = config.model.lm.vocab_size
  encoder = DualEncoder(config.model.vision, text_lm_config(vocab_size, **c.text), c.embed_dim)

  def text_tokens(tokens):  # `<image>`, `<EOC>` (ids past the vocabulary) -> padding.
    return jnp.where(tokens < vocab_size, tokens, 0)

  def images_of(batch):  # [B, 1, 1, S, S, 3] -> [B, S, S, 3]: a pair's one image.
    return batch["images"][:, 0, 0]

  first = next(iterator)[c.task]
  params = nn.unbox(jax.jit(encoder.init)(jax.random.key(config.seed), images_of(first),
                                          text_tokens(first["tokens"]))["params"])
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                c.num_steps)
  tx = optax.adamw(schedule, weight_decay=0.1)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, images, tokens):
    def loss_fn(p):
      return contrastive_loss(*encoder.apply({"params": p}, images, tokens))
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  history = []
  for i in range(c.num_steps):
    batch = first if i == 0 else next(iterator)[c.task]
    params, opt_state, loss, accuracy = step(params, opt_state, images_of(batch),
                                             text_tokens(batch["tokens"]))
    if progress is not None:
      progress.update(1)
    if (i + 1) % c.log_every == 0 or i + 1 == c.num_steps:
      history.append({"step": i + 1, "loss": float(loss), "accuracy": float(accuracy)})
      if progress is not None:
        progress.set_postfix(loss=f"{history[-1]['loss']:.3f}",
                             accuracy=f"{history[-1]['accuracy']:.2f}")
  return params, history
