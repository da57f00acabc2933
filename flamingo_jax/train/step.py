"""The train step: differentiate the next-token loss with respect to the trainable parameters
only; the frozen ones enter as constants, so they get neither gradients nor optimiser state."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from flamingo_jax.flamingo import trainable as trainable_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any      # The trainable parameters only.
  opt_state: Any


def next_token_loss(logits, targets, weights):
  """Mean of -log p(target) over tokens with weight > 0.

  logits: [B, L, V] float32; targets: [B, L] int32; weights: [B, L] float32 (0 on padding and on
  positions whose target is `<image>`, which the model never has to predict).
  """
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def init_train_state(params, tx: optax.GradientTransformation, patterns):
  """Splits params; returns (TrainState over the trainable part, the frozen part)."""
  train, frozen = trainable_lib.split(params, patterns)
  return TrainState(step=jnp.zeros((), jnp.int32), params=train, opt_state=tx.init(train)), frozen


def mixture_loss(model, params, batches: dict) -> tuple[jax.Array, dict]:
  """The paper's objective: sum over datasets m of lambda_m * (mean token loss on m).

  batches: {key: batch} as `data.mixtures` yields them; batch = images [B, M, T, H, W, 3],
  tokens / targets [B, L] int32, weights [B, L] float32, loss_weight [] (lambda_m). Returns the
  loss and {f"loss/{key}": unweighted mean token loss}.
  """
  total, per_batch = 0.0, {}
  for key, batch in batches.items():
    logits = model.apply({"params": params}, batch["images"], batch["tokens"])
    per_batch[f"loss/{key}"] = next_token_loss(logits, batch["targets"], batch["weights"])
    total += batch["loss_weight"] * per_batch[f"loss/{key}"]
  return total, per_batch


def train_step(model, tx: optax.GradientTransformation, state: TrainState, frozen, batches):
  """One optimiser step on one mixture step's batches (`mixture_loss`). Returns (new state,
  metrics)."""

  def loss_fn(train):
    return mixture_loss(model, trainable_lib.merge(train, frozen), batches)

  (loss, per_batch), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **per_batch}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
