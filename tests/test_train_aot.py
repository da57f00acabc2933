"""The ahead-of-time check compiles the real train step for a TPU topology on this CPU machine."""

from flamingo_jax.configs import load_config
from flamingo_jax.train import aot


def test_the_tiny_step_compiles_for_a_tpu_topology():
  config = load_config("tiny")
  config.mesh.update(dict(data=2, fsdp=2, tensor=1))
  text = aot.report(config, "v5p:2x2x1")
  assert "topology v5p:2x2x1: 4 x TPU v5" in text
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in text
  assert "of 95.00 GiB HBM" in text and "model FLOPs per step per chip" in text
