"""`make demo` end to end on a few steps of each stage: every stage leaves its result in the
work directory, the results come out as a table, JSON and a plot, and a second run skips what
is done. (How well the full demo learns is in the README, measured by `make demo`.)"""

import json
import os
import subprocess
import sys

from flax import traverse_util
import numpy as np
import orbax.checkpoint as ocp

import flamingo_jax

from conftest import REPO

FEW_STEPS = [
    "--config.lm_pretraining.num_steps=3", "--config.lm_pretraining.log_every=1",
    "--config.lm_pretraining.optimizer.warmup_steps=1",
    "--config.train.num_steps=3", "--config.train.log_every=1",
    "--config.contrastive.num_steps=3", "--config.contrastive.log_every=1",
    "--config.contrastive.warmup_steps=1",
    "--config.contrastive.batch_size=8", "--config.demo.eval.num_queries=2",
    "--config.demo.eval.num_support=4", "--config.demo.eval.batch_size=2",
    "--config.demo.eval.shots=(0,2)", "--config.demo.eval.max_new_tokens.synthetic_caption=3",
    "--config.demo.eval.max_new_tokens.synthetic_vqa=3",
    "--config.demo.eval.max_new_tokens.synthetic_binding=3"]


def run_demo(workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.demo", "--config=configs/demo.py",
       f"--workdir={workdir}", *FEW_STEPS], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_demo_stages_results_and_cache(tmp_path):
  first = run_demo(tmp_path)
  for stage in ("1/4", "2/4", "3/4", "4/4"):
    assert f"== {stage}" in first
  results = json.loads((tmp_path / "results.json").read_text())
  assert set(results["evaluation"]) == {"synthetic_caption", "synthetic_vqa",
                                        "synthetic_binding"}
  for by_shots in results["evaluation"].values():
    assert set(by_shots) == {"0", "2"}
  assert [h["step"] for h in results["training"]["Flamingo"]] == [1, 2, 3]
  assert [h["step"] for h in results["training"]["contrastive"]] == [1, 2, 3]
  assert [h["step"] for h in results["training"]["LM"]] == [1, 2, 3]
  assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
  assert "| synthetic_binding | accuracy |" in first and "Results:" in first

  # Stage 3 trains only the bridge, on the towers of stages 1 and 2.
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

  second = run_demo(tmp_path)
  assert "== " not in second and "| synthetic_binding | accuracy |" in second
