"""Pretraining a Flamingo config's LM on the text of its data mixture, before it is frozen (the
embedded demo's stage 2). Language models are pretrained on text alone, so the batches'
pixels are dropped; the `<image>` and `<EOC>` tokens stay, so the LM learns where documents
break for media before it ever sees one.

    params, history = pretrain.train(config)   # config.lm_pretraining, config.data
    flamingo_params["lm"] = params              # the `lm` subtree of a Flamingo

Few-shot learning rests on the LM's induction heads (Olsson et al. 2022: "... A B ... A" -> B),
which a large LM forms from the repetitions of web text. A small LM trained for minutes on
short synthetic documents forms none, so `lm_pretraining.induction` adds to every step a batch
of random token spans, each repeated once: only induction predicts the repeat.
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


def repeated_spans(rng: jax.Array, batch_size: int, span: int, vocab_size: int,
                   weight: float = 1.0) -> dict:
  """A batch of `batch_size` random token spans of length `span`, each followed by itself,
  as `data.mixtures` lays a task's batch out: tokens and targets [B, 2 * span - 1]. The loss
  is on the repeat's tokens after its first, which copying predicts and nothing else does."""
  spans = jax.random.randint(rng, (batch_size, span), 0, vocab_size, jnp.int32)
  sequence = jnp.concatenate([spans, spans], axis=1)
  weights = (jnp.arange(2 * span - 1) >= span).astype(jnp.float32)
  return {"tokens": sequence[:, :-1], "targets": sequence[:, 1:],
          "weights": jnp.broadcast_to(weights, (batch_size, 2 * span - 1)),
          "loss_weight": jnp.float32(weight)}


def train(config: ml_collections.ConfigDict, progress=None):
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
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batches, rng):
    if induction:
      batches = dict(batches, induction=repeated_spans(
          rng, induction.batch_size, induction.span, model_config.vocab_size, induction.weight))
    # The mixture's objective (train.step), on the LM's logits of the text alone.
    (loss, per_task), grads = jax.value_and_grad(lambda p: weighted_loss(
        lambda batch: lm.apply({"params": p}, batch["tokens"]), batches), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **per_task}

  history = []
  for i in range(c.num_steps):
    batches = {key: {k: v for k, v in batch.items() if k != "images"}
               for key, batch in next(iterator).items()}
    rng = jax.random.fold_in(jax.random.key(config.seed), i)
    params, opt_state, metrics = step(params, opt_state, batches, rng)
    if progress is not None:
      progress.update(1)
    if (i + 1) % c.log_every == 0 or i + 1 == c.num_steps:
      history.append({"step": i + 1, **{k: float(v) for k, v in metrics.items()}})
      if progress is not None:
        progress.set_postfix(loss=f"{history[-1]['loss']:.3f}")
  return params, history
