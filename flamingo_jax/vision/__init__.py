"""Frozen image encoders, built from the `vision` section of a model config.

ViT: images [N, H, W, 3] -> tokens [N, S, D]; NFNet: images [N, H, W, 3] -> grid [N, h, w, D];
EfficientNet-Lite: images [N, H, W, 3] -> its grid as tokens [N, h * w, D]. Whichever the
tower, the consumer flattens everything between N and D into the token axis.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from flamingo_jax.vision.efficientnet import EfficientNetLite
from flamingo_jax.vision.nfnet import NFNet, variant_depths
from flamingo_jax.vision.vit import ViT

ENCODERS = {"efficientnet_lite": EfficientNetLite, "nfnet": NFNet, "vit": ViT}

__all__ = ["ENCODERS", "EfficientNetLite", "NFNet", "ViT", "make_vision_encoder"]


def make_vision_encoder(cfg: ml_collections.ConfigDict, dtype=jnp.float32,
                        param_dtype=jnp.float32) -> nn.Module:
  """The encoder named by `cfg.kind` ("vit", "nfnet" or "efficientnet_lite"); the other fields
  are its fields.

  The convolutional towers accept any resolution, so they ignore `cfg.image_size` (which sizes
  the inputs).
  """
  kind = cfg.get("kind")
  if kind not in ENCODERS:
    raise ValueError(f"Unknown vision encoder kind {kind!r}; choose from {sorted(ENCODERS)}.")
  module = ENCODERS[kind]
  fields = {k: v for k, v in cfg.items() if k != "kind"}
  if kind != "vit":
    fields.pop("image_size", None)
  if kind == "nfnet":
    variant_depths(fields.get("variant"))  # Fails now, naming the variant, not at first call.
  known = {f.name for f in dataclasses.fields(module)} - {"parent", "name", "dtype", "param_dtype"}
  if unknown := sorted(set(fields) - known):
    raise ValueError(f"Unknown {kind} encoder fields {unknown}; expected some of {sorted(known)}.")
  return module(**fields, dtype=dtype, param_dtype=param_dtype)

