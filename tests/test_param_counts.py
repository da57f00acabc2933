"""Parameter counts of the paper's configurations, from shapes alone (jax.eval_shape)."""

import functools

import jax
from jax.sharding import PartitionSpec
import pytest

import flamingo_jax
from flamingo_jax.flamingo import trainable
from flamingo_jax.flamingo.model import xattn_layer_indices
from flamingo_jax.flamingo.scan import unstack_layers
from flamingo_jax.flamingo.factory import abstract_params_and_axes, build_model

from conftest import REPO

# Flamingo paper, section 3 and appendix B.1.2, table 5 ("Parameter counts"): total
# parameters of Flamingo-3B / 9B / 80B.
PAPER_TOTALS = {"flamingo_3b": 3.2e9, "flamingo_9b": 9.3e9, "flamingo_80b": 80e9}
PAPER_RESAMPLER = 194e6  # Appendix A.1.1: the same 194M resampler at every size.


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module", params=sorted(PAPER_TOTALS))
def shapes(request):
  config = flamingo_jax.load_config(str(REPO / "configs" / f"{request.param}.py"))
  return request.param, config, abstract_params_and_axes(build_model(config), config)[0]


def test_total_within_five_percent_of_the_paper(shapes):
  name, _, params = shapes
  total = count(params)
  assert abs(total / PAPER_TOTALS[name] - 1) < 0.05, f"{name}: {total / 1e9:.2f}B"


def test_resampler_is_the_papers_194m(shapes):
  _, _, params = shapes
  assert abs(count(params["resampler"]) / PAPER_RESAMPLER - 1) < 0.05


def test_trainable_parts_are_resampler_gated_blocks_and_new_tokens(shapes):
  """The paper configs scan their layers: the rule selects the same parameters in the scanned
  layout as in the unscanned one, where every gated block is its own subtree."""
  _, config, params = shapes
  train, frozen = trainable.split(params, config.model.trainable)
  unscanned = jax.eval_shape(functools.partial(unstack_layers, model_config=config.model), params)
  unscanned_train, unscanned_frozen = trainable.split(unscanned, config.model.trainable)
  gated = {f"gated_xattn_{k}" for k in range(len(xattn_layer_indices(config.model)))}
  assert set(unscanned_train) == {"resampler", "lm"} | gated
  assert set(unscanned_train["lm"]) == {"extra_embedding", "extra_unembedding"}
  assert set(train.get("scanned", {})) <= {"gated_xattn"}
  assert "vision_encoder" in frozen and "embedder" in frozen["lm"]
  assert count(train) == count(unscanned_train) and count(frozen) == count(unscanned_frozen)
  assert count(train) + count(frozen) == count(params)


LOGICAL_AXES = {"batch", "length", "embed", "mlp", "heads", "kv", "vocab", "latents", "media",
                "frames", "patches", "layers", None}


def test_every_parameter_has_logical_axis_names(tiny_config):
  """The sharding rules can place every parameter: each dimension has a logical name (or None
  for dimensions that are never sharded, like conv kernels' spatial dims)."""
  shapes, specs = abstract_params_and_axes(build_model(tiny_config), tiny_config)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  shape_leaves = jax.tree.leaves(shapes)
  assert len(spec_leaves) == len(shape_leaves) > 0
  for spec, shape in zip(spec_leaves, shape_leaves):
    assert isinstance(spec, PartitionSpec) and len(spec) == shape.ndim, (spec, shape.shape)
    assert set(spec) <= LOGICAL_AXES, spec
