"""Pretraining a Flamingo config's LM on the text of its data mixture, before it is frozen (the
embedded demo's stage 2). Language models are pretrained on text alone, so the batches'
pixels are dropped; the `<image>` and `<EOC>` tokens stay, so the LM learns where documents
break for media before it ever sees one.

    params, history = lm_pretraining.train(config)   # config.lm_pretraining, config.data
    flamingo_params["lm"] = params                     # the `lm` subtree of a Flamingo

`lm_pretraining.induction` adds to every step a batch of repeated random spans
(flamingo_jax.lm.induction), from which the small LM forms the induction heads that few-shot
learning copies with.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from flamingo_jax.data import mixtures
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.lm.induction import repeated_spans
from flamingo_jax.lm.model import DecoderLM
from flamingo_jax.train import loop
from flamingo_jax.train import optimizer as optimizer_lib
from flamingo_jax.train.step import loss_denominators, weighted_loss


def text_only(batches: dict) -> dict:
  """A mixture step's batches ({task: batch}) without their pixels."""
  return {task: {k: v for k, v in batch.items() if k != "images"}
          for task, batch in batches.items()}


def train(config: ml_collections.ConfigDict):
  """Trains `config.model`'s LM from `config.seed` on `config.data`'s mixture for
  `config.lm_pretraining.num_steps` with its optimiser section (as `train.optimizer`), plus
  `lm_pretraining.induction` ({batch_size, span, weight}) repeated random spans a step when
  set. `lm_pretraining.data`, when set, overrides parts of `config.data` for this stage alone
  (the demo's LM learns from shorter binding episodes than the bridge needs). Returns (params,
  history [{step, loss, loss/<task>}])."""
  c = config.lm_pretraining
  if c.get("data"):  # The LM's own reading of the mixture: overrides of `config.data`.
    config = config.copy_and_resolve_references()
    config.data.update(c.data.to_dict())
  model_config = lm_config(config.model)
  lm = DecoderLM(model_config)
  induction = c.get("induction")
  iterator = mixtures.make_iterator(config)
  tx = optimizer_lib.make_optimizer(c.optimizer)
  params = nn.unbox(jax.jit(lm.init)(jax.random.key(config.seed),
                                     jnp.zeros((1, 8), jnp.int32))["params"])

  @jax.jit
  def update(state, batches, rng):
    params, opt_state = state
    if induction:
      batches = dict(batches, induction=repeated_spans(
          rng, induction.batch_size, induction.span, model_config.vocab_size, induction.weight))
    # The mixture's objective (train.step), on the LM's logits of the text alone.
    (loss, per_task), grads = jax.value_and_grad(lambda p: weighted_loss(
        lambda batch: lm.apply({"params": p}, batch["tokens"]), batches,
        loss_denominators(batches, "per_token")), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **per_task}

  def step(state, batches, i):
    return update(state, batches, jax.random.fold_in(jax.random.key(config.seed), i))

  (params, _), history = loop.run(step, (params, tx.init(params)), map(text_only, iterator),
                                  c.num_steps, c.log_every, desc="lm")
  return params, history
