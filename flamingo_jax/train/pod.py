"""A TPU slice seen from this machine: its devices from a topology name (libtpu compiles for them;
no TPU is needed) and what a program compiled for it needs of each chip's HBM. What the train
step's and the serving programs' ahead-of-time checks (train/aot.py, train/serving.py) share.
"""

import os

from jax.experimental import topologies

# Compiling needs no TPU, so libtpu's one-process-per-host lock would only stop a second check
# (or a test) running beside the first.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

HBM_BYTES = {"TPU v4": 32 << 30, "TPU v5": 95 << 30, "TPU v5p": 95 << 30,
             "TPU v5 lite": 16 << 30, "TPU v6 lite": 32 << 30}


def devices(topology: str) -> list:
  """The devices of a topology name (v5p:8x8x8, v5e:4x4, v4:4x4x4, ...)."""
  return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def gib(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB"


def memory(compiled, kind: str) -> str:
  """A compiled program's per-chip memory: "arguments A, temporaries T, total N of H HBM (P%)".
  The total counts the outputs too, less the arguments they alias (donated buffers)."""
  analysis = compiled.memory_analysis()
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
           - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes)
  hbm = HBM_BYTES.get(kind)
  return (f"arguments {gib(analysis.argument_size_in_bytes)}, temporaries "
          f"{gib(analysis.temp_size_in_bytes)}, total {gib(total)}"
          + (f" of {gib(hbm)} HBM ({total / hbm:.0%})" if hbm else ""))
