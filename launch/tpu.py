"""Cloud TPU VMs and pod slices for flamingo-jax, one subcommand a step (launch/README.md):

  python launch/tpu.py create --name=flamingo --zone=us-east5-a --accelerator-type=v5p-128 \
      --queued --spot
  python launch/tpu.py setup --name=flamingo --zone=us-east5-a
  python launch/tpu.py train --name=flamingo --zone=us-east5-a \
      --config=configs/flamingo_9b.py --workdir=gs://bucket/run --config.train.microbatches=2
  python launch/tpu.py status|stop|delete --name=flamingo --zone=us-east5-a --queued
  python launch/tpu.py resume ...   # the create, setup and train flags together

Each subcommand is a short list of gcloud commands, and `--dry-run` prints them (shell-quoted,
one a line, comments starting with #) instead of running them, so a plan can be read, pasted
or tested without gcloud. Standard library only: it runs wherever gcloud does, no venv needed.

On the workers the project lives in ~/flamingo_jax with its own .venv; training runs there under
nohup, appending to ~/flamingo_jax/train.log, and its pid goes to train.pid. A queued resource's
id and its node's id are both --name, so `tpu-vm ssh NAME` reaches either kind.
"""

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
REMOTE_DIR = "flamingo_jax"  # On every worker, relative to the home directory.
# The runtime (TPU software version) each accelerator family boots with by default.
RUNTIME_VERSIONS = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5",
                    "v5litepod": "v2-alpha-tpuv5-lite", "v4": "tpu-ubuntu2204-base"}
# Describe states: the one that means "up", and those that become it without help.
READY = {"tpu-vm": "READY", "queued-resources": "ACTIVE"}
ON_THE_WAY = {"CREATING", "STARTING", "RESTARTING", "REPAIRING", "ACCEPTED",
              "WAITING_FOR_RESOURCES", "PROVISIONING"}
FAILED = {"FAILED", "TERMINATED"}
POLL_SECONDS = 60
OVERRIDE = re.compile(r"--config\.[\w.]+=.*", re.DOTALL)


def quote(argv: list[str]) -> str:
  """shlex.join, but `--flag='a value'` rather than `'--flag=a value'`: the same words to a
  shell, easier to read."""
  words = []
  for word in argv:
    flag, eq, value = word.partition("=")
    plain = word.startswith("--") and eq and re.fullmatch(r"--[\w-]+", flag)
    words.append(flag + eq + shlex.quote(value) if plain else shlex.quote(word))
  return " ".join(words)


class Runner:
  """Runs commands, or with `dry_run` prints them: the two paths share every other line."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def note(self, text: str):
    print(f"# {text}", flush=True)

  def run(self, argv: list[str], check: bool = True):
    if self.dry_run:
      print(quote(argv), flush=True)
      return
    print(f"+ {quote(argv)}", file=sys.stderr, flush=True)
    subprocess.run(argv, check=check)

  def state(self, argv: list[str], assumed: str) -> str:
    """The state a describe command prints ("" when the resource does not exist); in a dry run,
    `assumed`."""
    if self.dry_run:
      print(quote(argv), flush=True)
      self.note(f"state: {assumed or 'not found'} (assumed: --assume-state)")
      return assumed
    result = subprocess.run(argv, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def kind(args) -> str:
  return "queued-resources" if args.queued else "tpu-vm"


def gcloud(args, *words: str) -> list[str]:
  """`gcloud compute tpus WORDS` in this zone and project."""
  argv = ["gcloud", "compute", "tpus", *words, f"--zone={args.zone}"]
  return argv + ([f"--project={args.project}"] if args.project else [])


def ssh(args, script: str, worker: str = "all") -> list[str]:
  return gcloud(args, "tpu-vm", "ssh", args.name) + [f"--worker={worker}", f"--command={script}"]


def runtime_version(args) -> str:
  if args.runtime_version:
    return args.runtime_version
  family = args.accelerator_type.rsplit("-", 1)[0]
  if family not in RUNTIME_VERSIONS:
    sys.exit(f"tpu.py: no default runtime for {args.accelerator_type}; pass --runtime-version")
  return RUNTIME_VERSIONS[family]


def create(args, runner: Runner):
  spot = ["--spot"] if args.spot else []
  if args.queued:
    # Queued: the request waits in line for capacity instead of failing when there is none.
    runner.run(gcloud(args, "queued-resources", "create", args.name) + [
        f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={runtime_version(args)}"] + spot)
  else:
    runner.run(gcloud(args, "tpu-vm", "create", args.name) + [
        f"--accelerator-type={args.accelerator_type}", f"--version={runtime_version(args)}"]
        + spot)


def describe_state(args) -> list[str]:
  field = "state.state" if args.queued else "state"
  return gcloud(args, kind(args), "describe", args.name) + [f"--format=value({field})"]


def wait(args, runner: Runner):
  """Until the VM is up: a queued resource can wait for capacity for hours."""
  ready = READY[kind(args)]
  if runner.dry_run:
    runner.run(describe_state(args))
    runner.note(f"repeated every {POLL_SECONDS} s until {ready}")
    return
  while (state := runner.state(describe_state(args), "")) != ready:
    if state in FAILED:
      sys.exit(f"tpu.py: {args.name} is {state}; delete it and create it again")
    print(f"{args.name}: {state or 'not found'}; waiting for {ready}", file=sys.stderr)
    time.sleep(POLL_SECONDS)


def setup(args, runner: Runner):
  """The project and a venv with `.[tpu]` on every worker. Without --repo, copies this
  checkout's committed --ref (git archive: no .venv, caches or uncommitted edits)."""
  install = (f"cd {REMOTE_DIR}; python3 -m venv .venv || {{ sudo apt-get update -qq && "
             "sudo apt-get install -y -qq python3-venv && python3 -m venv --clear .venv; }; "
             ".venv/bin/pip install -q --upgrade pip; .venv/bin/pip install -q -e \".[tpu]\"")
  if args.repo:
    # init + fetch + checkout rather than clone: the same command updates an existing copy.
    fetch = (f"git init -q {REMOTE_DIR}; git -C {REMOTE_DIR} fetch -q --depth=1 "
             f"{shlex.quote(args.repo)} {shlex.quote(args.ref)}; "
             f"git -C {REMOTE_DIR} checkout -q -f FETCH_HEAD")
    runner.run(ssh(args, f"set -e; {fetch}; {install}"))
    return
  tarball = f"/tmp/flamingo_jax-{args.name}.tar.gz"
  runner.run(["git", "-C", str(REPO), "archive", "--format=tar.gz", f"--output={tarball}",
              args.ref])
  runner.run(gcloud(args, "tpu-vm", "scp", tarball, f"{args.name}:{REMOTE_DIR}.tar.gz")
             + ["--worker=all"])
  runner.run(ssh(args, f"set -e; mkdir -p {REMOTE_DIR}; "
                       f"tar -xzf {REMOTE_DIR}.tar.gz -C {REMOTE_DIR}; {install}"))


def train(args, runner: Runner):
  """The same command on every worker (jax.distributed finds the others), in the background so
  that ssh returns; refuses to start a second run beside a live one (libtpu allows one)."""
  command = shlex.join([".venv/bin/python", "-m", "flamingo_jax.train", f"--config={args.config}",
                        f"--workdir={args.workdir}", "--multihost", *args.overrides])
  runner.run(ssh(args, (
      f"set -e; cd {REMOTE_DIR}; "
      'if [ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null; then '
      'echo "already training: pid $(cat train.pid)" >&2; exit 1; fi; '
      'echo "== $(date -u +%FT%TZ) start" >> train.log; '
      f"nohup {command} >> train.log 2>&1 < /dev/null & echo $! > train.pid")))


def resume(args, runner: Runner):
  """After a preemption: recreate the VM unless it is up or coming up, set up a new one, train.
  The trainer resumes from the latest checkpoint in --workdir by itself."""
  state = runner.state(describe_state(args), args.assume_state)
  if state == READY[kind(args)]:
    runner.note(f"{args.name} is {state}: restarting training only")
    train(args, runner)
    return
  if state not in ON_THE_WAY:
    if state:
      delete(args, runner)
    create(args, runner)
  wait(args, runner)
  setup(args, runner)
  train(args, runner)


def status(args, runner: Runner):
  runner.run(gcloud(args, kind(args), "describe", args.name), check=False)
  runner.run(ssh(args, f"tail -n {args.lines} {REMOTE_DIR}/train.log", worker="0"), check=False)


def stop(args, runner: Runner):
  """SIGTERM, as a preemption sends: the trainer saves a checkpoint and exits."""
  runner.run(ssh(args, (
      f"cd {REMOTE_DIR}; "
      'if [ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null; then '
      'kill -TERM "$(cat train.pid)"; echo "SIGTERM to $(cat train.pid)"; fi')))


def delete(args, runner: Runner):
  if args.queued:  # --force deletes the node too.
    runner.run(gcloud(args, "queued-resources", "delete", args.name) + ["--force", "--quiet"])
  else:
    runner.run(gcloud(args, "tpu-vm", "delete", args.name) + ["--quiet"])


COMMANDS = {  # name: (function, flag groups, help)
    "create": (create, ["vm"], "Create the VM or queued resource."),
    "setup": (setup, ["code"], "Copy the project to every worker and pip install '.[tpu]'."),
    "train": (train, ["run"], "Start training on every worker, in the background."),
    "resume": (resume, ["vm", "code", "run"],
               "Recreate the VM if preempted, set it up if new, and train again."),
    "status": (status, [], "Describe the VM and tail worker 0's training log."),
    "stop": (stop, [], "SIGTERM the training (it checkpoints and exits)."),
    "delete": (delete, [], "Delete the VM, or the queued resource and its node."),
}


def parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument("--name", required=True, help="TPU (and queued resource) name.")
  common.add_argument("--zone", required=True, help="e.g. us-east5-a.")
  common.add_argument("--project", help="Default: gcloud's configured project.")
  common.add_argument("--queued", action="store_true", help="A queued resource, not a bare VM.")
  common.add_argument("--dry-run", action="store_true", help="Print the commands, run nothing.")
  vm = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  vm.add_argument("--accelerator-type", required=True, help="e.g. v5p-128 (64 chips).")
  vm.add_argument("--runtime-version", help="Default by family: " + ", ".join(
      f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items()))
  vm.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, preemptible.")
  code = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  code.add_argument("--repo", help="git URL the workers fetch; default: copy this checkout.")
  code.add_argument("--ref", default="HEAD", help="Commit, branch or tag (default HEAD).")
  run = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  run.add_argument("--config", required=True, help="Config file, relative to the repo root.")
  run.add_argument("--workdir", required=True, help="Checkpoints and logs, e.g. gs://b/run.")

  top = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
  commands = top.add_subparsers(dest="command", required=True)
  for name, (_, parents, text) in COMMANDS.items():
    parents = [common] + [{"vm": vm, "code": code, "run": run}[p] for p in parents]
    sub = commands.add_parser(name, parents=parents, allow_abbrev=False, help=text,
                              description=text, epilog="Config overrides: --config.a.b=value, "
                              "passed to the trainer." if run in parents else None)
    if name == "status":
      sub.add_argument("--lines", type=int, default=50, help="Log lines from worker 0.")
    if name == "resume":
      sub.add_argument("--assume-state", default="PREEMPTED",
                       help="Dry run only: the state describe would print ('' = not found).")
  return top


def main(argv: list[str]):
  top = parser()
  args, extra = top.parse_known_args(argv)
  # Everything unknown must be a trainer config override; only train and resume take them.
  bad = [a for a in extra if args.command not in ("train", "resume") or not OVERRIDE.fullmatch(a)]
  if bad:
    top.error(f"unrecognized arguments: {shlex.join(bad)} (config overrides look like "
              "--config.train.num_steps=1000, one argument each, for train and resume)")
  args.overrides = extra
  try:
    COMMANDS[args.command][0](args, Runner(args.dry_run))
  except subprocess.CalledProcessError as e:
    sys.exit(f"tpu.py: {shlex.join(e.cmd)} failed (exit status {e.returncode})")


if __name__ == "__main__":
  main(sys.argv[1:])
