"""Writes checkpoint_2977509/ for tests/test_legacy_checkpoint.py: the tiny config with random
weights and open gates, and the logits it gives on fixed inputs. It was run once with the code
of commit 2977509, the layout before the package was restructured:

  git worktree add /tmp/old 2977509
  cd /tmp/old && PYTHONPATH=/tmp/old python tests/data/make_checkpoint_2977509.py OUT_DIR
"""

import pathlib
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

import flamingo_jax


def main(out: pathlib.Path):
  config = flamingo_jax.load_config("configs/tiny.py")
  model, params = flamingo_jax.create(config, jax.random.key(7))
  # Open gates, so that the logits depend on the resampler and the gated blocks too.
  flat = traverse_util.flatten_dict(params, sep="/")
  flat = {k: jnp.full_like(v, 0.5) if k.endswith("_gate") else v for k, v in flat.items()}
  params = traverse_util.unflatten_dict(flat, sep="/")
  flamingo_jax.save(out, params, config)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 2, 1, 32, 32, 3)).astype(np.float32)
  tokens = rng.integers(0, 259, size=(2, 12)).astype(np.int32)
  tokens[:, [1, 7]] = config.model.media_token_id
  tokens[:, 6] = config.model.eoc_token_id
  logits = model.apply({"params": params}, images, tokens)
  np.savez(out / "expected_logits.npz", images=images, tokens=tokens, logits=np.asarray(logits))


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
