"""Frozen decoder-only language models (LLaMA family, GPT-2, GPT-NeoX, Chinchilla) from one config."""

from flamingo_jax.lm.model import DecodeState, DecoderBlock, DecoderLM, LMConfig

__all__ = ["DecodeState", "DecoderBlock", "DecoderLM", "LMConfig"]
