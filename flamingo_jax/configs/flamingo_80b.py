"""Flamingo-80B (paper section 3, appendix B.1): a frozen 70B Chinchilla-shaped LM with a
GATED XATTN-DENSE block before every 7th LM block, the 194M Perceiver Resampler and a frozen
NFNet-F6 at 320 px. The paper's total: 80B parameters."""

import ml_collections

from flamingo_jax.configs.base import chinchilla_lm, paper_config


def get_config() -> ml_collections.ConfigDict:
  # The 70B LM does not fit a chip: its heads and MLP split 16 ways (the paper's 16-way model
  # parallelism), everything else 16 ways over fsdp, and the remaining chips take data shards.
  return paper_config(chinchilla_lm(80, 8192, 64), xattn_every=7,
                      mesh=dict(data=-1, fsdp=16, tensor=16))
