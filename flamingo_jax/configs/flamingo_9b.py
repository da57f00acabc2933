"""Flamingo-9B (paper section 3, appendix B.1): a frozen 7B Chinchilla-shaped LM with a
GATED XATTN-DENSE block before every 4th LM block, the 194M Perceiver Resampler and a frozen
NFNet-F6 at 320 px. The paper's total: 9.3B parameters.

The LM has the shape of Gopher-7.1B (Rae et al. 2021, table 1: 32 layers, width 4096, 32 heads),
which gives 7.2B LM and 9.3B total parameters here. A 40-layer LM of width 4096 (the layer count
that 10 cross-attention layers at every 4th block would imply) has at least 8B parameters with
any Chinchilla-style 4D MLP, so it cannot be the paper's 7B LM; with 32 layers there are 8 gated
blocks (1.4B parameters against the paper's stated 1.6B).
"""

import ml_collections

from flamingo_jax.configs.base import chinchilla_lm, paper_config


def get_config() -> ml_collections.ConfigDict:
  return paper_config(chinchilla_lm(32, 4096, 32), xattn_every=4)
