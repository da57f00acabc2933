"""What both sides of benchmarks/compare_openflamingo.py measure with, so that they measure alike:
the same CPUs, wall-clock medians after warm-up, and the process's peak resident memory."""

import os
import statistics
import time


def pin_cpus(threads: int) -> None:
  """Runs this process (and what it starts) on CPUs 0..threads-1 only. XLA sizes its thread
  pools from the CPUs a process may use; torch is told separately (torch.set_num_threads)."""
  os.sched_setaffinity(0, range(threads))


def seconds(fn, runs: int, warmup: int = 1):
  """(wall-clock seconds of `runs` calls of fn() after `warmup` calls (compilation, caches),
  the last call's result); fn must return only when its results are ready."""
  for _ in range(warmup):
    result = fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return times, result


def median(times) -> float:
  return statistics.median(times)


def _status(field: str) -> int:
  """A /proc/self/status memory field in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def rss() -> int:
  """Bytes this process holds resident now."""
  return _status("VmRSS")


def reset_peak_rss() -> None:
  """Starts the peak resident memory (VmHWM) afresh from the current resident set (Linux)."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def peak_rss() -> int:
  """Bytes: the most this process has held resident since `reset_peak_rss`."""
  return _status("VmHWM")
