"""Frozen image encoders, built from the `vision` section of a model config.

ViT: images [N, H, W, 3] -> tokens [N, S, D]; NFNet: images [N, H, W, 3] -> grid [N, h, w, D].
Either way the consumer flattens everything between N and D into the token axis.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from flamingo_jax.vision.nfnet import NFNet, variant_depths
from flamingo_jax.vision.vit import ViT

ENCODERS = {"nfnet": NFNet, "vit": ViT}

__all__ = ["ENCODERS", "NFNet", "ViT", "make_vision_encoder"]


def make_vision_encoder(cfg: ml_collections.ConfigDict, dtype=jnp.float32,
                        param_dtype=jnp.float32) -> nn.Module:
  """The encoder named by `cfg.kind` ("vit" or "nfnet"); the other fields are its fields.

  An NFNet accepts any resolution, so it ignores `cfg.image_size` (which sizes the inputs).
  """
  kind = cfg.get("kind")
  if kind not in ENCODERS:
    raise ValueError(f"Unknown vision encoder kind {kind!r}; choose from {sorted(ENCODERS)}.")
  module = ENCODERS[kind]
  fields = {k: v for k, v in cfg.items() if k != "kind"}
  if kind == "nfnet":
    fields.pop("image_size", None)
    variant_depths(fields.get("variant"))  # Fails now, naming the variant, not at first call.
  known = {f.name for f in dataclasses.fields(module)} - {"parent", "name", "dtype", "param_dtype"}
  if unknown := sorted(set(fields) - known):
    raise ValueError(f"Unknown {kind} encoder fields {unknown}; expected some of {sorted(known)}.")
  return module(**fields, dtype=dtype, param_dtype=param_dtype)

