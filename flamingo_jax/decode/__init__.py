"""Decoding with a key/value cache: media are encoded once per prompt."""

from flamingo_jax.decode.greedy import greedy_generate

__all__ = ["greedy_generate"]
