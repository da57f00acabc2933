"""`make demo`: a forward pass and a short greedy generation with a Flamingo config.

Until the trained miniature lands, the weights here are random: the output shows the model runs
end to end (vision encoder -> resampler -> gated cross-attention -> LM -> KV-cache decoding),
not that it has learned anything.

  python -m flamingo_jax.demo --config=configs/tiny.py [--config.model.lm.num_layers=6]
"""

import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from flamingo_jax.decode import generate
from flamingo_jax.flamingo import trainable
from flamingo_jax.model_factory import create

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model config file.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 8, "Tokens to generate.")


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def interleaved_prompt(config, rng: np.random.Generator, num_images: int, text_tokens: int):
  """`<image> text <EOC> <image> text <EOC> ... <image>`: the shape of a few-shot prompt."""
  vocab, image, eoc = config.lm.vocab_size, config.media_token_id, config.eoc_token_id
  pieces = []
  for i in range(num_images):
    pieces.append([image])
    if i < num_images - 1:
      pieces.append(list(rng.integers(0, vocab, text_tokens)) + [eoc])
  return np.concatenate(pieces).astype(np.int32)[None]


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.perf_counter()
  model, params = create(config, jax.random.key(config.seed))
  train, frozen = trainable.split(params, config.model.trainable)
  print(f"Flamingo with RANDOM weights (nothing here is trained): "
        f"{count(params):,} parameters, {count(train):,} trainable, {count(frozen):,} frozen.")

  rng = np.random.default_rng(config.seed)
  num_images = 3
  size = config.model.vision.image_size
  images = jnp.asarray(rng.uniform(-1, 1, (1, num_images, 1, size, size, 3)), jnp.float32)
  tokens = jnp.asarray(interleaved_prompt(config.model, rng, num_images, text_tokens=5))
  logits = jax.jit(model.apply)({"params": params}, images, tokens)
  print(f"Forward pass: images {images.shape} + tokens {tokens.shape} -> logits {logits.shape}, "
        f"finite: {bool(jnp.isfinite(logits).all())}.")

  generated = generate(model, params, images, tokens, _NEW_TOKENS.value,
                       stop_token=config.model.eoc_token_id)
  print(f"Prompt tokens:    {tokens[0].tolist()}")
  print(f"Greedy new tokens (random weights, so meaningless ids): {generated[0].tolist()}")
  print(f"Done in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
  app.run(main)
