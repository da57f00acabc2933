"""The serving programs (encode, prefill, a cached decoding step) compile ahead of time for a TPU
topology on this CPU machine (train/serving.py, which train/serve_aot.py prints)."""

import subprocess
import sys

import jax
from jax.sharding import PartitionSpec as P
import pytest

from flamingo_jax import sharding
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.configs import load_config
from flamingo_jax.flamingo import factory
from flamingo_jax.train import pod, serving

from conftest import REPO, user_environment


@pytest.mark.parametrize("scan_layers, beams", [(False, 2), (True, 1)])
def test_the_tiny_serving_programs_compile_for_a_tpu_topology(scan_layers, beams):
  config = load_config("tiny")
  config.model.scan_layers = scan_layers
  text = serving.report(config, "v5p:2x2x1", batch=2, length=16, images=2, new_tokens=4,
                          beams=beams, mesh_sizes=(1, 2, 2))
  assert "topology v5p:2x2x1: 4 x TPU v5" in text
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in text
  assert "(frozen in bfloat16)" in text
  assert f"2 prompts of 16 tokens and 2 images, room for 4 new tokens, {beams} beams" in text
  for name in ("encode", "prefill", "decode step"):
    assert f"{name}: compiled in" in text
    assert f"{name} per chip: arguments" in text
  assert text.count("of 95.00 GiB HBM") == 3


def test_a_program_larger_than_the_chips_hbm_is_reported_not_raised():
  # A 131,072-token prompt's attention scores alone outgrow a v5e chip's 16 GiB.
  text = serving.report(load_config("tiny"), "v5e:2x2", batch=1, length=131072, images=1,
                          new_tokens=2, beams=1, mesh_sizes=(1, 1, 4))
  assert "prefill per chip: does not fit: " in text and "exceeds available HBM" in text
  assert "decode step per chip: arguments" in text


def test_the_decoding_state_is_split_over_the_batch_and_the_heads():
  """Left to XLA, prefill's output caches kept every row on every fsdp shard."""
  config = load_config("tiny")
  config.model.scan_layers = True
  mesh = sharding.command_line_mesh(config, (1, 2, 2), pod.devices("v5p:2x2x1"))
  params = orbax_io.placement(config, mesh)
  model, axis_rules = factory.build_model(config), sharding.rules(config)
  _, visual, prompts, _ = serving.abstract_inputs(config, mesh, 2, 16, 2, beams=2)
  state = serving.abstract_state(
      lambda p, v, t, q: serving.prefill_beams(model, p, v, t, q, 3, beams=2),
      (params, visual, prompts, prompts), mesh, axis_rules)
  batch, heads = ("data", "fsdp"), "tensor"
  for cache in jax.tree.leaves((state.scanned, state.media.scanned)):  # [U, N, S, K, Dh]
    assert cache.shape[1] == 4 and cache.sharding.spec == P(None, batch, None, heads, None)
  assert state.lm.key_positions.sharding.spec == P(batch, None)
  assert state.media_count.sharding.spec == P(batch)


@pytest.mark.slow
def test_the_command_line_prints_the_report():
  result = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.train.serve_aot", "--config=configs/tiny.py",
       "--topology=v5p:2x2x1", "--mesh=1,2,2", "--batch=2", "--length=16", "--images=2",
       "--new_tokens=4", "--beams=2"],
      cwd=REPO, env=user_environment(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 2}" in result.stdout
  assert "decode step per chip: arguments" in result.stdout
