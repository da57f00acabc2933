"""Shared fixtures: the tiny config and a model built from it."""

import os
import pathlib

# Eight CPU devices, so that meshes and sharding are tested on this machine. Set before JAX
# starts; a test that uses no mesh runs on the first device as before.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import pytest

import flamingo_jax

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_config():
  return flamingo_jax.load_config(str(REPO / "configs" / "tiny.py"))


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  return flamingo_jax.create(tiny_config, jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_forward(tiny_model):
  """The tiny model's forward pass, compiled once for the whole session: (params, images,
  tokens) -> logits."""
  model, _ = tiny_model
  return jax.jit(lambda params, images, tokens: model.apply({"params": params}, images, tokens))
