"""Decoding with a key/value cache: media encoded once (`encode`), prompts read once a call."""

from flamingo_jax.decode.beam import beam_search
from flamingo_jax.decode.generate import encode, generate, left_pad
from flamingo_jax.decode.scoring import candidate_log_likelihoods, right_pad

__all__ = ["beam_search", "candidate_log_likelihoods", "encode", "generate", "left_pad",
           "right_pad"]
