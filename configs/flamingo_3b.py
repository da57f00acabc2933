"""Flamingo-3B (paper section 3, appendix B.1): a frozen 1.4B Chinchilla-shaped LM with a
GATED XATTN-DENSE block before every LM block, the 194M Perceiver Resampler and a frozen
NFNet-F6 at 320 px. The paper's total: 3.2B parameters."""

import ml_collections

from flamingo_jax.config import chinchilla_lm, model_config, nfnet_vision


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(
      vision=nfnet_vision("F6", 320),
      lm=chinchilla_lm(24, 2048, 16),
      resampler={},
      xattn=dict(every=1),
      dtype="bfloat16",
  )
  return config
