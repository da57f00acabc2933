"""One run as several processes, JAX's multi-controller runtime, joined from a command line's flags.

Every process runs the same program on its own devices (a TPU slice's hosts, or processes on
machines of your own); once joined, `jax.devices()` lists every process's devices, meshes span
them all, and each process feeds and reads its own rows of a batch (`flamingo_jax.sharding`). A
command line that imports this module takes

    --multihost                                    join the others before anything runs
    --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                                                   where JAX cannot detect them itself

On a TPU slice (and under Slurm or Open MPI) `--multihost` alone is enough: JAX reads the
cluster from its environment. Elsewhere every process names process 0's address and a free port
on it, the number of processes and its own index, e.g. two processes on one machine:

    python -m flamingo_jax.train ... --multihost --coordinator_address=127.0.0.1:8476 \\
        --num_processes=2 --process_id=0     # and the same with --process_id=1
"""

from absl import app, flags
import jax

_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Run as one of several processes (every host of a TPU slice): join "
    "them with jax.distributed.initialize before anything runs.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost, where JAX cannot detect the cluster: "
    "process 0's host:port, the same in every process.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --coordinator_address: how many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --coordinator_address: this process's index, 0 to "
    "num_processes - 1.")


def initialize() -> None:
  """Joins the run's other processes as the flags say (jax.distributed.initialize); without
  --multihost, nothing. Call it before any JAX computation."""
  explicit = dict(coordinator_address=_COORDINATOR_ADDRESS.value,
                  num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if not _MULTIHOST.value:
    given = [f"--{name}" for name, value in explicit.items() if value is not None]
    if given:
      raise app.UsageError(f"{', '.join(given)} without --multihost: add it to join a "
                           "multi-process run")
    return
  # Processes on CPUs exchange arrays over gloo (TCP); without a CPU collectives
  # implementation, a computation across CPU processes fails. It concerns the CPU backend only.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**explicit)
