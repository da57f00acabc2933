"""The paper's optimiser (appendix B.1.2): AdamW, global-norm clipping at 1.0, weight decay 0.1
except on the resampler, learning rate warmed up linearly from 0 to 1e-4 over 5,000 steps and
then constant (flamingo_jax.configs.base.optimizer_config; `decay` "cosine" or "linear" decays
it instead, to `final_fraction` of the peak over `decay_steps`). It only ever sees the trainable
parameters."""

import re

from flax import traverse_util
import ml_collections
import optax

from flamingo_jax import sharding


# Parameters that scale, shift or gate activations rather than mix them: norm scales and
# biases, NFNet's gains, the tanh gates, CLIP's log temperature, a ViT's class token. The rest
# (kernels, embedding tables, latents, position embeddings) are weights and take decay. By name,
# so that a stacked [U, D] LayerNorm scale under `scan_layers` is treated as the [D] one it stacks.
NO_DECAY_NAMES = re.compile(r"(^|/)(scale|bias|gain|skip_gain|log_scale|cls_token|\w+_gate)$")


def decay_mask(params, no_decay_patterns):
  """True for the weights (kernels, embeddings, latents), which take weight decay; False for
  norm scales, biases, gains and gates (`NO_DECAY_NAMES`) and for anything matched by
  `no_decay_patterns` (the paper: the resampler). The same scanned or unscanned."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict({
      path: not NO_DECAY_NAMES.search(path) and not any(re.search(p, path)
                                                         for p in no_decay_patterns)
      for path in flat}, sep="/")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  peak, final = config.learning_rate, config.learning_rate * config.final_fraction
  after = {
      "constant": lambda: optax.constant_schedule(peak),
      "cosine": lambda: optax.cosine_decay_schedule(peak, config.decay_steps,
                                                    config.final_fraction),
      "linear": lambda: optax.linear_schedule(peak, final, config.decay_steps),
  }
  if config.decay not in after:
    raise ValueError(f"unknown decay {config.decay!r}; choose from {sorted(after)}")
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, config.warmup_steps), after[config.decay]()],
      [config.warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay,
                  mask=lambda p: decay_mask(p, config.no_decay)))



def opt_state_shardings(tx: optax.GradientTransformation, abstract_state, param_shardings,
                        mesh):
  """The optimiser state's shardings: moments like their parameters, counters replicated."""
  return optax.tree_map_params(tx, lambda _, s: s, abstract_state, param_shardings,
                               transform_non_params=lambda _: sharding.replicated(mesh))
