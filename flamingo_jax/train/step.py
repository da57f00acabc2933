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


def token_loss_sums(logits, targets, weights) -> tuple[jax.Array, jax.Array]:
  """(sum of weight * -log p(target), sum of weights).

  logits: [B, L, V] float32; targets: [B, L] int32; weights: [B, L] float32 (0 on padding and on
  positions whose target is `<image>`, which the model never has to predict).
  """
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return jnp.sum(nll * weights), jnp.sum(weights)


def next_token_loss(logits, targets, weights):
  """Mean of -log p(target) over tokens with weight > 0."""
  total, count = token_loss_sums(logits, targets, weights)
  return total / jnp.maximum(count, 1.0)


def init_train_state(params, tx: optax.GradientTransformation, patterns):
  """Splits params; returns (TrainState over the trainable part, the frozen part)."""
  train, frozen = trainable_lib.split(params, patterns)
  return TrainState(step=jnp.zeros((), jnp.int32), params=train, opt_state=tx.init(train)), frozen


# How a dataset's summed token loss is normalised before its lambda weights it.
# "per_sequence": the paper's eq. (2), lambda_m * E over sequences of -sum_l log p(y_l | ...):
#   a long M3W window weighs its 256 tokens, an ALIGN pair its 32.
# "per_token": the mean over the dataset's tokens (OpenFlamingo's recipe): every dataset's
#   loss is on the scale of one token, so lambda alone sets the balance.
LOSS_NORMALIZATIONS = ("per_sequence", "per_token")


def loss_denominators(batches: dict, normalization: str) -> dict:
  """{key: what the dataset's summed token loss is divided by}: its sequences or its tokens."""
  if normalization == "per_sequence":
    return {key: jnp.float32(batch["weights"].shape[0]) for key, batch in batches.items()}
  if normalization == "per_token":
    return {key: jnp.sum(batch["weights"]) for key, batch in batches.items()}
  raise ValueError(f"unknown loss normalization {normalization!r}; choose from "
                   f"{LOSS_NORMALIZATIONS}")


def mixture_loss(model, params, batches: dict, denominators: dict):
  """The paper's objective: sum over datasets m of lambda_m * (the loss on m).

  batches: {key: batch} as `data.mixtures` yields them; batch = images [B, M, T, H, W, 3],
  tokens / targets [B, L] int32, weights [B, L] float32, attach_to_next [B] bool (which image
  text attends to, `Flamingo.decode`), loss_weight [] (lambda_m).
  denominators: {key: what m's summed token loss is divided by} (`loss_denominators` of the
  whole batch, also when `batches` is one microbatch of it, so that microbatch losses add up).
  Returns the loss and {f"loss/{key}": m's unweighted loss (this microbatch's share of it)}.
  """
  return weighted_loss(
      lambda batch: model.apply({"params": params}, batch["images"], batch["tokens"],
                                attach_to_next=batch["attach_to_next"]),
      batches, denominators)


def weighted_loss(logits_fn, batches: dict, denominators: dict):
  """`mixture_loss` for any model: logits_fn(batch) -> logits [B, L, V]."""
  total, per_batch = 0.0, {}
  for key, batch in batches.items():
    loss_sum, _ = token_loss_sums(logits_fn(batch), batch["targets"], batch["weights"])
    per_batch[f"loss/{key}"] = loss_sum / jnp.maximum(denominators[key], 1.0)
    total += batch["loss_weight"] * per_batch[f"loss/{key}"]
  return total, per_batch


def split_microbatches(batches: dict, microbatches: int) -> dict:
  """Leading batch axis B -> [microbatches, B / microbatches]; scalars stay."""

  def split(x):
    if x.ndim == 0:
      return x
    if x.shape[0] % microbatches:
      raise ValueError(f"batch of {x.shape[0]} does not split into {microbatches} microbatches")
    return x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])

  return jax.tree.map(split, batches)


def loss_and_grads(model, train, frozen, batches: dict, normalization: str,
                   microbatches: int = 1):
  """(loss, per-batch losses, gradients of the trainable parameters), the batches processed
  whole or in `microbatches` sequential slices whose gradients add up (lax.scan: one slice's
  activations live at a time). Equal up to float summation order. normalization: one of
  `LOSS_NORMALIZATIONS`."""
  denominators = loss_denominators(batches, normalization)

  def loss_fn(train, batches):
    return mixture_loss(model, trainable_lib.merge(train, frozen), batches, denominators)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (loss, per_batch), grads = grad_fn(train, batches)
    return loss, per_batch, grads
  sliced = split_microbatches(batches, microbatches)
  scalars = {key: {k: v for k, v in batch.items() if v.ndim == 0} for key, batch in batches.items()}
  arrays = {key: {k: v for k, v in batch.items() if v.ndim} for key, batch in sliced.items()}

  def accumulate(carry, microbatch):
    batch = {key: {**microbatch[key], **scalars[key]} for key in microbatch}
    (loss, per_batch), grads = grad_fn(train, batch)
    return jax.tree.map(jnp.add, carry, (loss, per_batch, grads)), None

  zeros = (jnp.zeros(()), {f"loss/{key}": jnp.zeros(()) for key in batches},
           jax.tree.map(jnp.zeros_like, train))
  (loss, per_batch, grads), _ = jax.lax.scan(accumulate, zeros, arrays)
  return loss, per_batch, grads


def train_step(model, tx: optax.GradientTransformation, state: TrainState, frozen, batches,
               normalization: str, microbatches: int = 1):
  """One optimiser step on one mixture step's batches (`mixture_loss`, normalised per
  `normalization`). Returns (new state, metrics)."""
  loss, per_batch, grads = loss_and_grads(model, state.params, frozen, batches, normalization,
                                          microbatches)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **per_batch}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
