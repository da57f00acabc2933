"""benchmarks/compare_openflamingo.py on its tiny model (--smoke): both sides run, the table
and the JSON come out, and the two sides compute the same thing."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, user_environment

pytestmark = pytest.mark.slow


def test_compare_openflamingo_smoke(tmp_path):
  path = tmp_path / "compare.json"
  # The tiny model's timings do not matter here; XLA compiles its dozen programs, which is most
  # of the test's time, twice as fast without optimising them.
  env = dict(user_environment(), XLA_FLAGS="--xla_backend_optimization_level=0")
  result = subprocess.run(
      [sys.executable, "benchmarks/compare_openflamingo.py", "--smoke", f"--json={path}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| benchmark | metric | flamingo-jax | OpenFlamingo | ratio |" in result.stdout
  summary = json.loads(path.read_text())

  # The same model: logits, the first training step's loss, decoding and scoring agree.
  checks = summary["checks"]
  assert checks["logits_max_abs_diff"] < 1e-4
  assert abs(checks["first_loss"]["flamingo_jax"] - checks["first_loss"]["open_flamingo"]) < 1e-4
  shots = checks["shots_2"]
  assert shots["greedy_tokens_equal"] == shots["beam_sequences_equal"] == 1.0
  assert shots["beam_scores_max_abs_diff"] < 1e-4
  assert shots["log_likelihoods_max_abs_diff"] < 1e-4
  # The captioning evaluation: the same prompts, support and decoding, so the same captions.
  evaluation = checks["eval_2"]
  assert evaluation["captions_equal"] == 1.0
  assert abs(evaluation["cider"]["flamingo_jax"] - evaluation["cider"]["open_flamingo"]) < 1e-6

  metrics = {(row["benchmark"].split(",")[0], row["metric"]) for row in summary["rows"]}
  assert metrics == {("train step", "examples/s"), ("train step", "tokens/s"),
                     ("train step", "peak memory GiB"),
                     ("train step", "peak memory above imports GiB"),
                     *((mode, metric) for mode in ("greedy", "beam 3") for metric in (
                         "first token s", "tokens/s after the first",
                         "new tokens/s end to end")),
                     ("score 5 candidates", "s"), ("few-shot captioning eval", "queries/s")}
  # Every figure is timed itself, the cached steps after the first token too: none is a
  # difference of two timings, which on a busy CPU came out negative.
  assert all(row["flamingo_jax"] > 0 and row["open_flamingo"] > 0 for row in summary["rows"])
  # The formula counts the matmuls the jaxpr has; XLA adds the elementwise work.
  flops = summary["flops"]
  assert abs(flops["jaxpr"] / flops["formula"]["total"] - 1) < 1e-3
  assert 1 <= flops["cost_analysis"] / flops["formula"]["total"] < 1.2
  assert [(row["images"], row["length"]) for row in summary["scaling"]] == [(1, 24), (2, 24)]


def test_device_check_smoke_runs_both_parts_in_bfloat16_without_tensorflow(tmp_path):
  """benchmarks/device_check.sh --smoke, the dry run of the GPU check, with TensorFlow, seqio
  and pycocoevalcap unimportable, as on the GPU machines: the training step and the comparison
  run in bfloat16 and one JSON holds both."""
  blocked = tmp_path / "blocked"
  for package in ("tensorflow", "seqio", "pycocoevalcap"):
    (blocked / package).mkdir(parents=True)
    (blocked / package / "__init__.py").write_text(
        f"raise ImportError('{package} is not on the GPU machines')\n")
  out = tmp_path / "out"
  env = dict(user_environment(), PYTHON=sys.executable, OUT=str(out),
             PYTHONPATH=str(blocked))
  result = subprocess.run(["bash", "benchmarks/device_check.sh", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / "device_check.json").read_text())

  step = summary["train_step"]
  assert step["precision"] == "bfloat16" and step["device"] == "cpu"
  assert len(step["step_seconds"]) == 2 and step["tokens_per_second"] > 0
  assert step["model_flops_per_chip"] > 0 and step["mfu"] is None  # No peak known for a CPU.
  assert 0 < step["loss"] < 20  # Finite: ln 259 per token over three tasks is 16.7.

  compare = summary["compare"]
  assert compare["flags"]["dtype"] == "bfloat16"
  # Two bfloat16 computations of one model: near, not equal (float32's agree to 1e-6).
  checks = compare["checks"]
  assert checks["logits_max_abs_diff"] < 0.05
  assert checks["shots_2"]["log_likelihoods_max_abs_diff"] < 0.05
  metrics = {(row["benchmark"].split(",")[0], row["metric"]) for row in compare["rows"]}
  assert ("greedy", "tokens/s after the first") in metrics
  assert not any("captioning" in benchmark for benchmark, _ in metrics)
  assert all(row["flamingo_jax"] > 0 and row["open_flamingo"] > 0 for row in compare["rows"])
