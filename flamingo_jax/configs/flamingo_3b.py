"""Flamingo-3B (paper section 3, appendix B.1): a frozen 1.4B Chinchilla-shaped LM with a
GATED XATTN-DENSE block before every LM block, the 194M Perceiver Resampler and a frozen
NFNet-F6 at 320 px. The paper's total: 3.2B parameters."""

import ml_collections

from flamingo_jax.configs.base import chinchilla_lm, paper_config


def get_config() -> ml_collections.ConfigDict:
  return paper_config(chinchilla_lm(24, 2048, 16), xattn_every=1)
