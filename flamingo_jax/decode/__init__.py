"""Decoding with a key/value cache: media are encoded and prompts read once per call."""

from flamingo_jax.decode.beam import beam_search
from flamingo_jax.decode.generate import generate, left_pad
from flamingo_jax.decode.scoring import candidate_log_likelihoods, right_pad

__all__ = ["beam_search", "candidate_log_likelihoods", "generate", "left_pad", "right_pad"]
