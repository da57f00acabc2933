"""Pretraining a Flamingo config's LM on the text of its data mixture, before it is frozen (the
embedded demo's stage 1). Language models are pretrained on text alone, so the batches'
pixels are dropped; the `<image>` and `<EOC>` tokens stay, so the LM learns where documents
break for media before it ever sees one.

    params, history = pretrain.train(config)   # config.lm_pretraining, config.data
    flamingo_params["lm"] = params              # the `lm` subtree of a Flamingo
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flamingo_jax.data import mixtures
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.lm.model import DecoderLM
from flamingo_jax.train import optimizer as optimizer_lib
from flamingo_jax.train.step import weighted_loss


def train(config: ml_collections.ConfigDict, progress=None):
  """Trains `config.model`'s LM from `config.seed` on `config.data`'s mixture for
  `config.lm_pretraining.num_steps` with its optimiser section (as `train.optimizer`);
  returns (params, history [{step, loss, loss/<task>}])."""
  c = config.lm_pretraining
  lm = DecoderLM(lm_config(config.model))
  iterator = mixtures.make_iterator(config)
  tx = optimizer_lib.make_optimizer(c.optimizer)
  params = nn.unbox(jax.jit(lm.init)(jax.random.key(config.seed),
                                     jnp.zeros((1, 8), jnp.int32))["params"])
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batches):
    # The mixture's objective (train.step), on the LM's logits of the text alone.
    (loss, per_task), grads = jax.value_and_grad(lambda p: weighted_loss(
        lambda batch: lm.apply({"params": p}, batch["tokens"]), batches), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **per_task}

  history = []
  for i in range(c.num_steps):
    batches = {key: {k: v for k, v in batch.items() if k != "images"}
               for key, batch in next(iterator).items()}
    params, opt_state, metrics = step(params, opt_state, batches)
    if progress is not None:
      progress.update(1)
    if (i + 1) % c.log_every == 0 or i + 1 == c.num_steps:
      history.append({"step": i + 1, **{k: float(v) for k, v in metrics.items()}})
      if progress is not None:
        progress.set_postfix(loss=f"{history[-1]['loss']:.3f}")
  return params, history
