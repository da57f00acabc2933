"""launch/tpu.py: the exact gcloud commands each subcommand prints with --dry-run, and that a
real run (against a fake gcloud that records its arguments) runs those same commands.

Every run has a PATH without gcloud or git, so a command that tried to reach Google Cloud would
fail rather than pass unnoticed; nothing here needs the network.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / "launch" / "tpu.py"
WHERE = ["--name=flamingo", "--zone=us-east5-a", "--project=my-project"]
AT = ["--zone=us-east5-a", "--project=my-project"]  # What every gcloud command ends its words with.
TPUS = ["gcloud", "compute", "tpus"]
TRAIN = ["--config=configs/flamingo_9b.py", "--workdir=gs://my-bucket/flamingo_9b"]


def launch(*args, path: pathlib.Path, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                        env=dict(os.environ, PATH=str(path), **(env or {})), timeout=60)


def dry_run(tmp_path, *args) -> list[list[str]]:
  """The commands printed, each split back into words as a shell would (comments dropped)."""
  result = launch(*args, *WHERE, "--dry-run", path=tmp_path)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]


def remote(command: list[str]) -> str:
  """The script an ssh command runs on the workers."""
  (script,) = [w.removeprefix("--command=") for w in command if w.startswith("--command=")]
  return script


def test_create_on_demand(tmp_path):
  assert dry_run(tmp_path, "create", "--accelerator-type=v5p-128") == [
      TPUS + ["tpu-vm", "create", "flamingo", *AT, "--accelerator-type=v5p-128",
              "--version=v2-alpha-tpuv5"]]


def test_create_spot(tmp_path):
  assert dry_run(tmp_path, "create", "--accelerator-type=v5p-128", "--spot") == [
      TPUS + ["tpu-vm", "create", "flamingo", *AT, "--accelerator-type=v5p-128",
              "--version=v2-alpha-tpuv5", "--spot"]]


@pytest.mark.parametrize("spot", [[], ["--spot"]])
def test_create_queued(tmp_path, spot):
  assert dry_run(tmp_path, "create", "--accelerator-type=v5p-128", "--queued", *spot) == [
      TPUS + ["queued-resources", "create", "flamingo", *AT, "--node-id=flamingo",
              "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", *spot]]


def test_runtime_version_by_family_or_given(tmp_path):
  (command,) = dry_run(tmp_path, "create", "--accelerator-type=v6e-256")
  assert "--version=v2-alpha-tpuv6e" in command
  (command,) = dry_run(tmp_path, "create", "--accelerator-type=v5p-8",
                       "--runtime-version=v2-alpha-tpuv5-custom")
  assert "--version=v2-alpha-tpuv5-custom" in command
  result = launch("create", *WHERE, "--accelerator-type=v9-8", "--dry-run", path=tmp_path)
  assert result.returncode != 0 and "pass --runtime-version" in result.stderr


def test_setup_copies_this_checkout_to_every_worker(tmp_path):
  archive, scp, ssh = dry_run(tmp_path, "setup")
  tarball = "/tmp/flamingo_jax-flamingo.tar.gz"
  assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz",
                     f"--output={tarball}", "HEAD"]
  assert scp == TPUS + ["tpu-vm", "scp", tarball, "flamingo:flamingo_jax.tar.gz", *AT,
                        "--worker=all"]
  assert ssh[:9] == TPUS + ["tpu-vm", "ssh", "flamingo", *AT, "--worker=all"]
  script = remote(ssh)
  assert script.startswith("set -e; mkdir -p flamingo_jax; "
                           "tar -xzf flamingo_jax.tar.gz -C flamingo_jax; cd flamingo_jax; ")
  assert "python3 -m venv .venv" in script
  assert script.endswith('.venv/bin/pip install -q -e ".[tpu]"')


def test_setup_from_a_repository(tmp_path):
  (ssh,) = dry_run(tmp_path, "setup", "--repo=https://github.com/me/flamingo-jax.git",
                   "--ref=v1.0")
  assert "--worker=all" in ssh
  script = remote(ssh)
  assert ("git -C flamingo_jax fetch -q --depth=1 https://github.com/me/flamingo-jax.git v1.0; "
          "git -C flamingo_jax checkout -q -f FETCH_HEAD") in script
  assert script.endswith('.venv/bin/pip install -q -e ".[tpu]"')


def test_train_runs_in_the_background_on_every_worker_with_overrides(tmp_path):
  (ssh,) = dry_run(tmp_path, "train", *TRAIN, "--config.train.microbatches=4",
                   "--config.mesh.fsdp=8", "--config.data.vocabulary=gs://b/sp model.model")
  assert ssh[:9] == TPUS + ["tpu-vm", "ssh", "flamingo", *AT, "--worker=all"]
  script = remote(ssh)
  command = (".venv/bin/python -m flamingo_jax.train --config=configs/flamingo_9b.py "
             "--workdir=gs://my-bucket/flamingo_9b --multihost --config.train.microbatches=4 "
             "--config.mesh.fsdp=8 '--config.data.vocabulary=gs://b/sp model.model'")
  assert f"nohup {command} >> train.log 2>&1 < /dev/null & echo $! > train.pid" in script
  assert script.startswith("set -e; cd flamingo_jax; ")
  assert 'kill -0 "$(cat train.pid)"' in script  # No second run beside a live one.


def test_train_rejects_anything_but_config_overrides(tmp_path):
  for extra in (["--config.train.num_steps", "10"], ["--steps=10"]):
    result = launch("train", *WHERE, *TRAIN, *extra, "--dry-run", path=tmp_path)
    assert result.returncode == 2
    assert "config overrides look like --config.train.num_steps=1000" in result.stderr
  result = launch("status", *WHERE, "--config.train.num_steps=1", "--dry-run", path=tmp_path)
  assert result.returncode == 2 and "unrecognized arguments" in result.stderr


@pytest.mark.parametrize("args,missing", [
    (["create", "--name=flamingo", "--accelerator-type=v5p-128"], "--zone"),
    (["create", "--name=flamingo", "--zone=us-east5-a"], "--accelerator-type"),
    (["train", "--name=flamingo", "--zone=us-east5-a", "--config=configs/flamingo_9b.py"],
     "--workdir"),
    (["delete", "--zone=us-east5-a"], "--name"),
])
def test_a_missing_required_flag_fails_clearly(tmp_path, args, missing):
  result = launch(*args, "--dry-run", path=tmp_path)
  assert result.returncode == 2
  assert "the following arguments are required" in result.stderr
  assert missing in result.stderr.splitlines()[-1]


def test_status(tmp_path):
  describe, tail = dry_run(tmp_path, "status", "--queued", "--lines=100")
  assert describe == TPUS + ["queued-resources", "describe", "flamingo", *AT]
  assert tail == TPUS + ["tpu-vm", "ssh", "flamingo", *AT, "--worker=0",
                         "--command=tail -n 100 flamingo_jax/train.log"]
  describe, _ = dry_run(tmp_path, "status")
  assert describe == TPUS + ["tpu-vm", "describe", "flamingo", *AT]


def test_stop_sends_sigterm_on_every_worker(tmp_path):
  (ssh,) = dry_run(tmp_path, "stop")
  assert "--worker=all" in ssh
  assert 'kill -TERM "$(cat train.pid)"' in remote(ssh)


def test_delete(tmp_path):
  assert dry_run(tmp_path, "delete") == [
      TPUS + ["tpu-vm", "delete", "flamingo", *AT, "--quiet"]]
  assert dry_run(tmp_path, "delete", "--queued") == [
      TPUS + ["queued-resources", "delete", "flamingo", *AT, "--force", "--quiet"]]


RESUME = ["resume", "--accelerator-type=v5p-128", "--spot", *TRAIN, "--config.mesh.fsdp=2"]


def test_resume_after_preemption_recreates_sets_up_and_trains(tmp_path):
  commands = dry_run(tmp_path, *RESUME, "--queued", "--assume-state=SUSPENDED")
  describe = TPUS + ["queued-resources", "describe", "flamingo", *AT,
                     "--format=value(state.state)"]
  assert commands[:5] == [
      describe,
      TPUS + ["queued-resources", "delete", "flamingo", *AT, "--force", "--quiet"],
      TPUS + ["queued-resources", "create", "flamingo", *AT, "--node-id=flamingo",
              "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5", "--spot"],
      describe,  # Polled until ACTIVE.
      ["git", "-C", str(REPO), "archive", "--format=tar.gz",
       "--output=/tmp/flamingo_jax-flamingo.tar.gz", "HEAD"]]
  assert commands[5][3:5] == ["tpu-vm", "scp"]
  assert "pip install" in remote(commands[6])
  assert "flamingo_jax.train" in remote(commands[7]) and "--config.mesh.fsdp=2" in remote(
      commands[7])
  assert len(commands) == 8


def test_resume_waits_for_a_request_on_its_way_without_recreating(tmp_path):
  commands = dry_run(tmp_path, *RESUME, "--queued", "--assume-state=WAITING_FOR_RESOURCES")
  assert [c[3:5] for c in commands] == [
      ["queued-resources", "describe"], ["queued-resources", "describe"],
      ["archive", "--format=tar.gz"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]


def test_resume_of_a_missing_vm_creates_without_deleting(tmp_path):
  commands = dry_run(tmp_path, *RESUME, "--assume-state=")
  assert [c[3:5] for c in commands[:3]] == [
      ["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "describe"]]


def test_resume_of_a_ready_vm_only_restarts_training(tmp_path):
  describe, ssh = dry_run(tmp_path, *RESUME, "--assume-state=READY")
  assert describe == TPUS + ["tpu-vm", "describe", "flamingo", *AT, "--format=value(state)"]
  assert "flamingo_jax.train" in remote(ssh)


FAKE = """#!{python}
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
  with open(os.environ["STATES"]) as f:
    states = f.read().split()
  with open(os.environ["STATES"], "w") as f:
    f.write(" ".join(states[1:]))
  print(states[0])
sys.exit(1 if "create" in sys.argv and os.environ.get("FAIL_CREATE") else 0)
"""


@pytest.fixture
def fake_tools(tmp_path):
  """A PATH whose gcloud and git record their arguments; describe prints the next of STATES."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "git"):
    (bin_dir / tool).write_text(FAKE.format(python=sys.executable))
    (bin_dir / tool).chmod(0o755)
  calls, states = tmp_path / "calls", tmp_path / "states"
  env = {"CALLS": str(calls), "STATES": str(states)}

  def run(args, state_sequence, **extra_env):
    states.write_text(" ".join(state_sequence))
    result = launch(*args, *WHERE, path=bin_dir, env=dict(env, **extra_env))
    lines = calls.read_text().splitlines() if calls.exists() else []
    return result, [json.loads(line) for line in lines]
  return run


def test_a_real_run_runs_the_printed_commands(tmp_path, fake_tools):
  args = [*RESUME, "--queued"]
  printed = dry_run(tmp_path, *args, "--assume-state=SUSPENDED")
  result, calls = fake_tools(args, ["SUSPENDED", "ACTIVE"])
  assert result.returncode == 0, result.stderr
  assert calls == printed


def test_a_real_resume_of_a_ready_vm(fake_tools):
  result, calls = fake_tools(RESUME, ["READY"])
  assert result.returncode == 0, result.stderr
  assert [c[3:5] for c in calls] == [["tpu-vm", "describe"], ["tpu-vm", "ssh"]]


def test_a_failed_gcloud_command_stops_with_its_command_line(fake_tools):
  result, calls = fake_tools(["create", "--accelerator-type=v5p-128"], [], FAIL_CREATE="1")
  assert result.returncode == 1 and len(calls) == 1
  assert "tpu.py: gcloud compute tpus tpu-vm create flamingo" in result.stderr
  assert "failed (exit status 1)" in result.stderr
