"""One run as several processes (JAX's multi-controller runtime), joined from a CLI's flags.

Every process runs the same program on its own devices (a TPU slice's hosts, or processes on
machines of your own); once joined, `jax.devices()` lists every process's devices, meshes span
them all, and each process feeds and reads its own rows of a batch (`flamingo_jax.sharding`). A
command line that imports this module takes

    --multihost                                    on a TPU slice (or under Slurm, Open MPI)
    --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                                                   anywhere else

On a TPU slice JAX reads the cluster from its environment. Elsewhere every process names process
0's address and a free port on it, the number of processes and its own index, e.g. two
processes on one machine:

    python -m flamingo_jax.train ... --coordinator_address=127.0.0.1:8476 --num_processes=2 \\
        --process_id=0     # and the same with --process_id=1
"""

from absl import flags
import jax

_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Run as one of several processes (every host of a TPU slice), which "
    "JAX finds itself: join them with jax.distributed.initialize before anything runs.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "Run as one of several processes that meet at process 0's "
    "HOST:PORT (the same in every process), where JAX cannot find them itself.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --coordinator_address: how many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --coordinator_address: this process's index, 0 to "
    "num_processes - 1.")


def initialize() -> None:
  """Joins the run's other processes as the flags say (jax.distributed.initialize, which names
  a missing one); with none of them, nothing. Call it before any JAX computation."""
  explicit = dict(coordinator_address=_COORDINATOR_ADDRESS.value,
                  num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  if not _MULTIHOST.value and all(value is None for value in explicit.values()):
    return
  # Processes on CPUs exchange arrays over gloo (TCP): recent JAX's default; older versions have
  # no CPU collectives unless asked, and a computation across CPU processes fails. It concerns
  # the CPU backend only.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**explicit)
