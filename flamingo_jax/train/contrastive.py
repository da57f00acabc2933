"""Contrastive pretraining of a vision tower on image-text pairs (the paper's appendix B.1.3;
the embedded demo's stage 3): the dual encoder and loss of flamingo_jax.vision.contrastive,
trained on a pair task of the data mixture.

    params, history = contrastive.train(config)   # config.contrastive, config.data
    flamingo_params["vision_encoder"] = params["vision_encoder"]
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flamingo_jax.data import mixtures
from flamingo_jax.train import loop
from flamingo_jax.vision.contrastive import DualEncoder, contrastive_loss, text_lm_config


def train(config: ml_collections.ConfigDict):
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
  pairs = (batches[c.task] for batches in mixtures.make_iterator(data_config))
  vocab_size = config.model.lm.vocab_size
  encoder = DualEncoder(config.model.vision, text_lm_config(vocab_size, **c.text), c.embed_dim)

  def text_tokens(tokens):  # `<image>`, `<EOC>` (ids past the vocabulary) -> padding.
    return jnp.where(tokens < vocab_size, tokens, 0)

  def images_of(batch):  # [B, 1, 1, S, S, 3] -> [B, S, S, 3]: a pair's one image.
    return batch["images"][:, 0, 0]

  # The first batch gives the init its shapes, then is the first step's.
  first = next(pairs)
  params = nn.unbox(jax.jit(encoder.init)(jax.random.key(config.seed), images_of(first),
                                          text_tokens(first["tokens"]))["params"])
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps,
                                                c.num_steps)
  tx = optax.adamw(schedule, weight_decay=0.1)

  @jax.jit
  def update(state, images, tokens):
    params, opt_state = state
    def loss_fn(p):
      return contrastive_loss(*encoder.apply({"params": p}, images, tokens))
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss, "accuracy": accuracy}

  def step(state, batch, _):
    return update(state, images_of(batch), text_tokens(batch["tokens"]))

  (params, _), history = loop.run(step, (params, tx.init(params)),
                                  itertools.chain([first], pairs), c.num_steps, c.log_every,
                                  desc="vision", shown=("loss", "accuracy"))
  return params, history
