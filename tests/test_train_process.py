"""The training CLI as a process: SIGKILL between checkpoints then restart gives bitwise the
uninterrupted run's losses; SIGTERM saves a checkpoint and exits 0."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent

# The tiny config, shallower and on short sequences: the processes start, compile and run in
# seconds. One CPU device (no forced device count), so any batch size shards.
OVERRIDES = [
    "--config.model.lm.num_layers=2", "--config.model.vision.depth=1",
    "--config.model.resampler.depth=1", "--config.train.log_every=1",
    *(f"--config.data.tasks.{task}.{field}={value}"
      for task in ("synthetic_interleaved", "synthetic_binding", "synthetic_pairs")
      for field, value in (("batch_size", 2), ("max_length", 32), ("max_images", 2))),
]


def start(workdir, *overrides) -> subprocess.Popen:
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "flamingo_jax.train", f"--config={REPO}/configs/tiny.py",
             f"--workdir={workdir}", *OVERRIDES, *overrides]
  return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)


def metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(condition, process, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"training exited with {process.returncode}: {process.stderr.read()}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("timed out")
    time.sleep(0.2)


def finish(process, timeout=600) -> str:
  _, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-3000:]
  return stderr


def losses(records) -> dict[int, float]:
  """step -> loss; a step run twice (before a kill and after the restart) keeps its last."""
  return {r["step"]: r["loss"] for r in records}


def test_sigkill_then_restart_gives_the_uninterrupted_losses_bitwise(tmp_path):
  steps = ["--config.train.num_steps=10", "--config.train.checkpoint_every=3"]
  reference = start(tmp_path / "reference", *steps)
  interrupted = start(tmp_path / "interrupted", *steps)
  # Killed after the checkpoint of step 3 is complete and step 5 has run: steps 4-5 are lost.
  wait_until(lambda: (tmp_path / "interrupted/checkpoints/3/commit_success.txt").exists()
             and len(metrics(tmp_path / "interrupted")) >= 5, interrupted)
  interrupted.send_signal(signal.SIGKILL)
  interrupted.wait()
  killed_at = len(metrics(tmp_path / "interrupted"))
  assert killed_at < 10
  finish(start(tmp_path / "interrupted", *steps))
  finish(reference)

  # The libraries' logs, the trainer's among them, go to the workdir's log (flamingo_jax.console).
  log = (tmp_path / "interrupted" / "train.log").read_text()
  resumed = int(log.split("Resumed from step ")[1].split()[0])
  records = metrics(tmp_path / "interrupted")
  assert 3 <= resumed < killed_at and records[killed_at]["step"] == resumed + 1
  expected = losses(metrics(tmp_path / "reference"))
  assert sorted(expected) == list(range(1, 11))
  assert losses(records) == expected  # Bitwise: the floats are equal, not close.


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
  process = start(tmp_path, "--config.train.num_steps=1000",
                  "--config.train.checkpoint_every=1000")
  wait_until(lambda: len(metrics(tmp_path)) >= 2, process)
  process.send_signal(signal.SIGTERM)
  finish(process)
  last = metrics(tmp_path)[-1]["step"]
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert 2 <= last < 1000 and saved[-1] == last
  assert (tmp_path / f"checkpoints/{last}/commit_success.txt").exists()
