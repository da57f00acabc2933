"""Flamingo-3B and Flamingo-80B train steps compiled for TPU pod topologies on this machine
(libtpu, no TPU): per-chip memory against HBM, FLOPs per step, compile time.

  python benchmarks/aot_pod.py
  python benchmarks/aot_pod.py --runs=flamingo_80b:v5p:8x8x8
"""

from absl import app, flags

from flamingo_jax.configs import load_config
from flamingo_jax.train import aot

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", ["flamingo_3b:v5p:4x4x4", "flamingo_80b:v5p:8x8x8"],
                  "config:topology pairs.")


def main(argv):
  del argv
  for run in FLAGS.runs:
    name, topology = run.split(":", 1)
    print(f"== {name} on {topology}", flush=True)
    print(aot.report(load_config(name), topology), flush=True)


if __name__ == "__main__":
  app.run(main)
