"""Induction data for a small LM's pretraining (train.lm_pretraining).

Few-shot learning rests on the LM's induction heads (Olsson et al. 2022: "... A B ... A" -> B),
which a large LM forms from the repetitions of web text. A small LM trained for minutes on
short synthetic documents forms none, so its pretraining adds to every step a batch of random
token spans, each repeated once: only induction predicts the repeat.
"""

import jax
import jax.numpy as jnp


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
