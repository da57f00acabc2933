"""flamingo-jax: DeepMind's Flamingo visual language model (arXiv 2204.14198) in JAX/Flax.

    config = flamingo_jax.load_config("configs/tiny.py")
    model, params = flamingo_jax.create(config, jax.random.key(0))
    logits = model.apply({"params": params}, images, tokens)   # [B, L, V] float32
    flamingo_jax.save("ckpt", params, config)
    model, params, config = flamingo_jax.load("ckpt")
"""

from flamingo_jax.checkpoints.orbax_io import load, save
from flamingo_jax.configs import load_config
from flamingo_jax.flamingo.factory import create

__all__ = ["create", "load", "load_config", "save"]
