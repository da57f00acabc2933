"""A checkpoint written before the package was restructured (commit 2977509) still loads.

tests/data/checkpoint_2977509 is the tiny config with random weights and open gates, written by
tests/data/make_checkpoint_2977509.py with that commit's code, together with the logits it
gave then on fixed inputs.
"""

import pathlib

import numpy as np

import flamingo_jax

CHECKPOINT = pathlib.Path(__file__).resolve().parent / "data" / "checkpoint_2977509"


def expected():
  with np.load(CHECKPOINT / "expected_logits.npz") as f:
    return f["images"], f["tokens"], f["logits"]


def test_checkpoint_of_the_previous_layout_gives_its_logits():
  model, params, _ = flamingo_jax.load(CHECKPOINT)
  images, tokens, logits = expected()
  np.testing.assert_allclose(model.apply({"params": params}, images, tokens), logits,
                             rtol=1e-5, atol=1e-5)


def test_checkpoint_of_the_previous_layout_loads_into_scanned_layers():
  config = flamingo_jax.load(CHECKPOINT)[2]
  config.model.scan_layers = True
  model, params, _ = flamingo_jax.load(CHECKPOINT, config)
  assert "scanned" in params
  images, tokens, logits = expected()
  np.testing.assert_allclose(model.apply({"params": params}, images, tokens), logits,
                             rtol=1e-5, atol=1e-5)
