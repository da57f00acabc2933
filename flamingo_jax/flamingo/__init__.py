"""The Flamingo bridge: Perceiver Resampler, gated cross-attention, media masking, the model."""

from flamingo_jax.flamingo.gated_xattn import GatedCrossAttentionBlock
from flamingo_jax.flamingo.masking import (attached_media_index, cross_attention_mask,
                                           media_index, next_attended)
from flamingo_jax.flamingo.model import Flamingo, FlamingoDecodeState, lm_config
from flamingo_jax.flamingo.resampler import PerceiverResampler

__all__ = ["Flamingo", "FlamingoDecodeState", "GatedCrossAttentionBlock", "PerceiverResampler",
           "attached_media_index", "cross_attention_mask", "lm_config", "media_index",
           "next_attended"]
