"""FLOPs counted from jaxprs: loops count their trip count, unlike XLA's cost analysis."""

import jax
import jax.numpy as jnp

from flamingo_jax.flamingo.factory import abstract_params_and_axes, build_model, example_inputs
from flamingo_jax.train import flops


def test_a_scan_counts_its_body_length_times_and_convolutions_their_windows():
  x, w = jax.ShapeDtypeStruct((4, 8), jnp.float32), jax.ShapeDtypeStruct((8, 8), jnp.float32)
  scanned = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
  assert flops.count(scanned, x, w) == 5 * 2 * 4 * 8 * 8
  # XLA counts the loop body once: the reason for counting from the jaxpr.
  assert jax.jit(scanned).lower(x, w).compile().cost_analysis()["flops"] < 2 * 2 * 4 * 8 * 8
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
  images = jax.ShapeDtypeStruct((2, 6, 6, 6), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 2, 9), jnp.float32)  # 3 groups of 2 input features.
  assert flops.count(conv, images, kernel) == 2 * (2 * 6 * 6 * 9) * (3 * 3 * 2)


def test_scanned_and_unrolled_layers_count_the_same(tiny_config):
  images, tokens = example_inputs(tiny_config, batch=2, length=16)
  counts = []
  for scan in (False, True):
    config = tiny_config.copy_and_resolve_references()
    config.model.scan_layers = scan
    model = build_model(config)
    params, _ = abstract_params_and_axes(model, config)
    counts.append(flops.count(lambda p, i, t: model.apply({"params": p}, i, t), params, images,
                              tokens))
  assert counts[0] == counts[1] > 0
