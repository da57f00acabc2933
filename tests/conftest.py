"""Shared fixtures: the tiny config and a model built from it; one shrunk demo run."""

import os
import pathlib
import subprocess
import sys

# Eight CPU devices, so that meshes and sharding are tested on this machine. Set before JAX
# starts; a test that uses no mesh runs on the first device as before.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

# The test extra's torch is a CUDA build (the one whose torchvision, which open_clip needs,
# installs offline). Its triton segfaults when first imported into a process that has loaded
# TensorFlow (seqio's, which many test modules load), and torch imports triton lazily, from
# transformers and open_clip calls; imported before TensorFlow, both work.
try:
  import triton  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:  # A CPU build of torch, or none.
  pass
import filelock  # pylint: disable=g-import-not-at-top
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


@pytest.fixture(scope="session")
def demo_vocabulary(tmp_path_factory) -> str:
  """configs/demo.py's vocabulary, as `make demo` trains it in its first stage."""
  from flamingo_jax.data import synthetic, tokenizer  # pylint: disable=g-import-not-at-top
  config = flamingo_jax.load_config(str(REPO / "configs" / "demo.py"))
  return tokenizer.train_sentencepiece(
      synthetic.corpus(config.data.synthetic.seed, config.tokenizer.num_examples,
                       name_colours=config.data.synthetic.name_colours),
      config.tokenizer.vocab_size, tmp_path_factory.mktemp("tokenizer") / "spm.model")


# `make demo` with every stage cut to a few steps (configs/demo.py), for the demo and colab tests;
# configs/demo_smollm2.py imports its LM, so it has no LM pretraining to cut.
LM_PRETRAINING_FLAGS = [
    "--config.lm_pretraining.num_steps=3", "--config.lm_pretraining.log_every=1",
    "--config.lm_pretraining.optimizer.warmup_steps=1"]
SHRUNK_DEMO_FLAGS = [
    "--config.train.num_steps=3", "--config.train.log_every=1",
    "--config.contrastive.num_steps=3", "--config.contrastive.log_every=1",
    "--config.contrastive.warmup_steps=1", "--config.contrastive.batch_size=8",
    "--config.demo.eval.num_queries=2", "--config.demo.eval.num_support=4",
    "--config.demo.eval.batch_size=2", "--config.demo.eval.shots=(0,2)",
    "--config.demo.eval.max_new_tokens.synthetic_caption=3",
    "--config.demo.eval.max_new_tokens.synthetic_vqa=3",
    "--config.demo.eval.max_new_tokens.synthetic_binding=3"]


def user_environment() -> dict:
  """This environment as a user's shell has it: the CPU, without the tests' eight devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  if flags.strip():
    env["XLA_FLAGS"] = flags
  else:  # XLA reads a blank XLA_FLAGS as a file name.
    env.pop("XLA_FLAGS", None)
  return env


def run_shrunk_demo(workdir, config: str = "configs/demo.py", extra_flags=()) -> str:
  """Runs the shrunk demo of `config` in `workdir`, `extra_flags` replacing the shrunk flags of
  the same fields (absl keeps a repeated flag's first value); returns its stdout."""
  flags = SHRUNK_DEMO_FLAGS + (LM_PRETRAINING_FLAGS if config == "configs/demo.py" else [])
  replaced = {flag.split("=")[0] for flag in extra_flags}
  flags = [flag for flag in flags if flag.split("=")[0] not in replaced] + list(extra_flags)
  result = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.demo", f"--config={config}",
       f"--workdir={workdir}", *flags], cwd=REPO, env=user_environment(),
      capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="session")
def shrunk_demo(tmp_path_factory, worker_id):
  """(work directory, stdout) of one shrunk demo run for the whole session, however many
  pytest-xdist workers ask for it (xdist's recipe: a directory they share, and a lock)."""
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent
  workdir, stdout = root / "shrunk_demo", root / "shrunk_demo.stdout"
  with filelock.FileLock(str(root / "shrunk_demo.lock")):
    if not stdout.exists():
      stdout.write_text(run_shrunk_demo(workdir))
  return workdir, stdout.read_text()
