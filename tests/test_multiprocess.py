"""The training CLI as 2 processes x 2 CPU devices (JAX's multi-controller runtime, a loopback
coordinator, gloo between the processes) gives the losses of 1 process x 4 devices on the same
mesh and global batch, each process reading its own data shard; the checkpoint the two processes
write together resumes on either layout and continues the single process's losses. And the
launcher of such runs (tests/multihost.py) stops every process when one fails or time runs out."""

import json
import pathlib
import shutil
import sys
import time

import numpy as np
import pytest

from conftest import REPO, user_environment
from multihost import run_processes

# The tiny config, shallower, on short sequences, with a real update at the first step. A step is
# one batch of 2 examples drawn from its three tasks (strategy sample: one step to compile), one
# example from each of 2 data shards: a process reads its own, or one process both, and the
# global batch is the same (data/mixtures.py). The mesh splits the batch and the parameters'
# embedding axis (fsdp) across the two processes and their heads and MLP (tensor) within each:
# the gradients reduce, and the checkpoint's arrays are written, across processes.
OVERRIDES = [
    "--config.data.num_shards=2", "--config.data.strategy=sample",
    # A data position holds the synthetic source's shuffled indices, the whole split's: saving
    # 100,000 takes seconds.
    "--config.data.synthetic.split_sizes.train=1000",
    "--config.model.lm.num_layers=2", "--config.model.vision.depth=1",
    "--config.model.resampler.depth=1", "--config.train.log_every=1",
    "--config.train.checkpoint_every=1000", "--config.train.optimizer.warmup_steps=0",
    "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
    *(f"--config.data.tasks.{task}.{field}={value}"
      for task in ("synthetic_interleaved", "synthetic_binding", "synthetic_pairs")
      for field, value in (("batch_size", 2), ("max_length", 32), ("max_images", 2))),
]
FIRST, MORE = 3, 2  # Steps before the checkpoint, and after it.
# Float32 throughout (tiny.py), and both layouts run one program on one mesh; only a reduction
# across the processes may add in another order than within one process, a relative 1e-7,
# which a few of Adam's steps carry on at most a few times over. (Here they agree bitwise.)
RTOL = 1e-5


def train(workdir, num_steps: int, num_processes: int, devices_per_process: int,
          cache) -> dict:
  """Trains (or resumes) in `workdir` to `num_steps`; {step: metrics} of every step logged.
  The runs share JAX's compilation cache (`cache`): a layout's later runs compile nothing."""
  run_processes([sys.executable, "-m", "flamingo_jax.train", f"--config={REPO}/configs/tiny.py",
                 f"--workdir={workdir}", f"--config.train.num_steps={num_steps}", *OVERRIDES],
                num_processes, devices_per_process, timeout=600,
                env=dict(user_environment(), JAX_COMPILATION_CACHE_DIR=str(cache)))
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return {record["step"]: record for record in map(json.loads, lines)}


def assert_same_training(metrics: dict, reference: dict, steps) -> None:
  for step in steps:
    tokens = lambda m: m[step]["tokens_per_second"] * m[step]["step_seconds"]
    np.testing.assert_allclose(tokens(metrics), tokens(reference), rtol=1e-6)
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(metrics[step][key], reference[step][key], rtol=RTOL,
                                 err_msg=f"step {step} {key}")


@pytest.mark.slow
def test_two_processes_train_and_resume_as_one(tmp_path):
  cache = tmp_path / "compilation_cache"
  one = train(tmp_path / "one", FIRST + MORE, 1, 4, cache)
  two = train(tmp_path / "two", FIRST, 2, 2, cache)
  assert sorted(one) == list(range(1, FIRST + MORE + 1))
  assert sorted(two) == list(range(1, FIRST + 1))
  assert_same_training(two, one, range(1, FIRST + 1))
  # The data position is saved a shard at a time, so either layout resumes it.
  data = tmp_path / f"two/checkpoints/{FIRST}/data"
  assert sorted(p.name for p in data.glob("*.index")) == [
      "data-00000-of-00002.index", "data-00001-of-00002.index"]

  for num_processes, devices_per_process in ((2, 2), (1, 4)):
    resumed = tmp_path / f"resumed_{num_processes}x{devices_per_process}"
    shutil.copytree(tmp_path / "two", resumed)
    metrics = train(resumed, FIRST + MORE, num_processes, devices_per_process, cache)
    assert f"Resumed from step {FIRST}" in (resumed / "train.log").read_text()
    assert_same_training(metrics, one, range(FIRST + 1, FIRST + MORE + 1))


# Process 0 sleeps for a minute, process 1 for `seconds`; then they exit with 3.
SLEEPER = ("import sys, time; time.sleep(60 if sys.argv[-1] == '--process_id=0' else "
           "float(sys.argv[1])); sys.exit(3)")


def test_one_failing_process_stops_them_all():
  start = time.monotonic()
  with pytest.raises(AssertionError,
                     match=r"process 1 of 2 exited with 3(.|\n)*process 0: exit -9"):
    run_processes([sys.executable, "-c", SLEEPER, "0"], 2, 1, timeout=30)
  with pytest.raises(AssertionError, match="timed out after 1 s; processes still running: 0, 1"):
    run_processes([sys.executable, "-c", SLEEPER, "20"], 2, 1, timeout=1)
  assert time.monotonic() - start < 15  # Killed, not waited for.
