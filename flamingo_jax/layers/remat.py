"""Rematerialisation: a block keeps fewer activations for the backward pass and recomputes the
rest, trading FLOPs for memory. Values and gradients are unchanged.

Policies (`config.model.remat`):
  "none": keep every activation.
  "full": keep only the block's inputs; recompute the whole block (`nothing_saveable`).
  "dots": also keep the outputs of matmuls without batch dimensions, i.e. the weight
    projections, which are most of a block's FLOPs, but not the attention logits and
    probabilities [B, H, L, S], which are einsums over batch and head dimensions and grow with
    L^2 (`checkpoint_dots_with_no_batch_dims`; `dots_saveable` would keep those too).
"""

import flax.linen as nn
import jax

POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat(module_class: type[nn.Module], policy: str) -> type[nn.Module]:
  """`module_class` rematerialised under `policy`; "none" returns it unchanged.

  Only `__call__`, the full pass that training differentiates, is rematerialised; the decoding
  methods (`extend`, `media_kv`, ...) take no gradients and run as they are.
  """
  if policy == "none":
    return module_class
  if policy not in POLICIES:
    raise ValueError(f"Unknown remat policy {policy!r}; choose from none, {', '.join(POLICIES)}.")
  return nn.remat(module_class, policy=POLICIES[policy])
