"""A command line run as several processes of one JAX run on this machine's CPU, joined by
`flamingo_jax.distributed`'s flags on a loopback coordinator:

    from multihost import run_processes
    results = run_processes([sys.executable, "-m", "flamingo_jax.train", ...],
                            num_processes=2, devices_per_process=2, timeout=600)
    results[0].stdout   # process 0's

Each process sees its own `devices_per_process` CPU devices, so the run has
num_processes x devices_per_process of them, every cross-process exchange going over gloo.
"""

import contextlib
import re
import socket
import subprocess
import tempfile
import time
from typing import Sequence

from conftest import REPO, user_environment


def free_port() -> int:
  """A loopback port no one listens on now (the OS's pick)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_environment(env: dict | None, devices: int) -> dict:
  """`env` (default: a user's, `conftest.user_environment`) on the CPU with `devices` devices."""
  env = dict(user_environment() if env is None else env, JAX_PLATFORMS="cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def run_processes(argv: Sequence[str], num_processes: int, devices_per_process: int,
                  timeout: float, env: dict | None = None) -> list[subprocess.CompletedProcess]:
  """Runs `argv` as `num_processes` processes in the repository's root and waits for them all;
  returns their CompletedProcess (text stdout and stderr), in process order.

  With more than one process, process I gets `--coordinator_address=127.0.0.1:PORT
  --num_processes=N --process_id=I` appended, PORT a free port; a single process runs `argv` as
  it is (no distributed runtime), the reference a multi-process run is compared with. `env`
  (default: a user's environment) gets JAX_PLATFORMS=cpu and the device count.

  Should any process exit non-zero, or `timeout` seconds (all the processes together) pass,
  every process still running is killed, as it is if the caller is interrupted, and
  AssertionError gives each process's return code and the end of its stderr.
  """
  env = process_environment(env, devices_per_process)
  commands = [list(argv)]
  if num_processes > 1:
    address = f"127.0.0.1:{free_port()}"
    commands = [[*argv, f"--coordinator_address={address}",
                 f"--num_processes={num_processes}", f"--process_id={i}"]
                for i in range(num_processes)]
  with contextlib.ExitStack() as files:
    # Output to files, not pipes: a process blocked on a full pipe would hang the others.
    outputs = [[files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2)]
               for _ in commands]
    processes = []
    try:
      processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
                   for command, (out, err) in zip(commands, outputs)]
      failure = wait(processes, timeout)
    finally:
      for process in processes:
        if process.poll() is None:
          process.kill()
          process.wait()
    results = [subprocess.CompletedProcess(command, process.returncode, read(out), read(err))
               for command, process, (out, err) in zip(commands, processes, outputs)]
  if failure:
    raise AssertionError(failure + "".join(
        f"\n--- process {i}: exit {r.returncode}, stderr ends:\n{r.stderr[-3000:]}"
        for i, r in enumerate(results)))
  return results


def read(file) -> str:
  file.seek(0)
  return file.read()


def wait(processes: list[subprocess.Popen], timeout: float) -> str:
  """Waits until every process has exited 0 (-> ""), one has failed or the time is up (-> what
  happened; the others may still run)."""
  deadline = time.monotonic() + timeout
  while True:
    codes = [process.poll() for process in processes]
    failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
    if failed:
      return f"process {failed[0]} of {len(processes)} exited with {codes[failed[0]]}"
    if all(code == 0 for code in codes):
      return ""
    if time.monotonic() > deadline:
      return f"timed out after {timeout} s; processes still running: " + ", ".join(
          str(i) for i, code in enumerate(codes) if code is None)
    time.sleep(0.2)
