"""`make demo` end to end on a few steps of each stage: every stage leaves its result in the
work directory, the results come out as a table, JSON and a plot, and a second run skips what
is done. (How well the full demo learns is in docs/demo.md, measured by `make demo`.)"""

import json

from flax import traverse_util
import numpy as np
import orbax.checkpoint as ocp
import pytest

import flamingo_jax

from conftest import run_shrunk_demo

pytestmark = pytest.mark.slow


def test_demo_stages_results_and_cache(shrunk_demo):
  tmp_path, first = shrunk_demo
  for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
    assert f"== {stage}" in first
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["evaluation"]) == {"synthetic_caption", "synthetic_vqa",
                                        "synthetic_binding"}
  for by_shots in results["evaluation"].values():
    assert set(by_shots) == {"0", "2"}
  assert [h["step"] for h in results["training"]["Flamingo"]] == [1, 2, 3]
  assert [h["step"] for h in results["training"]["contrastive"]] == [1, 2, 3]
  assert [h["step"] for h in results["training"]["LM"]] == [1, 2, 3]
  # The LM also learns from repeated random spans (its induction heads).
  assert all(h["loss/induction"] > 0 for h in results["training"]["LM"])
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
  assert "| synthetic_binding | accuracy |" in first and "Results:" in first

  # Stage 4 trains only the bridge, on the towers of stages 2 and 3.
  _, final, _ = flamingo_jax.load(tmp_path / "flamingo" / "export")
  final = traverse_util.flatten_dict(final, sep="/")
  with ocp.StandardCheckpointer() as checkpointer:
    lm = checkpointer.restore(tmp_path / "lm" / "params")
    towers = checkpointer.restore(tmp_path / "vision" / "params")
  frozen = {f"lm/{k}": v for k, v in traverse_util.flatten_dict(lm, sep="/").items()
            if not k.startswith("extra_")}
  frozen.update({f"vision_encoder/{k}": v for k, v in traverse_util.flatten_dict(
      towers["vision_encoder"], sep="/").items()})
  assert len(frozen) > 20
  for key, value in frozen.items():
    np.testing.assert_array_equal(final[key], value)

  second = run_shrunk_demo(tmp_path)
  assert "== " not in second and "| synthetic_binding | accuracy |" in second


def test_smollm2_demo_trains_the_bridge_on_the_imported_lm(tmp_path):
  """configs/demo_smollm2.py: stages 1-2 import SmolLM2 and its tokenizer, which the data
  pipeline and the evaluation then use, and stage 4 leaves the imported LM as it was."""
  # Zero shots only: each prompt length compiles SmolLM2's decoding anew.
  out = run_shrunk_demo(tmp_path, "configs/demo_smollm2.py", ["--config.demo.eval.shots=(0,)"])
  for stage in ("1-2/5", "3/5", "4/5", "5/5"):
    assert f"== {stage}" in out
  assert "| synthetic_binding | accuracy |" in out
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["training"]) == {"contrastive", "Flamingo"}  # No LM pretraining.
  assert set(results["evaluation"]["synthetic_binding"]) == {"0"}
  _, imported, _ = flamingo_jax.load(tmp_path / "lm")
  _, final, config = flamingo_jax.load(tmp_path / "flamingo" / "export")
  assert (config.model.lm.num_layers, config.model.lm.vocab_size) == (30, 49152)
  assert config.model.media_token_id == 49152
  assert config.data.vocabulary == str(tmp_path / "lm" / "tokenizer.json")
  imported = traverse_util.flatten_dict(imported["lm"], sep="/")
  final = traverse_util.flatten_dict(final["lm"], sep="/")
  for key, value in imported.items():
    if not key.startswith("extra_"):  # <image> and <EOC>: trained.
      np.testing.assert_array_equal(final[key], value, err_msg=key)
