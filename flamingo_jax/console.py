"""What a command line prints: its own lines, progress bars and results, and nothing else.

The libraries under it log much that a user at a console does not need: TensorFlow's and XLA's
C++ notices, written straight to the process's stderr before Python sees them (CUDA probing on a
machine without a GPU, CPU features, a TPU runtime that finds no TPU), and Python log records
(orbax's INFO lines for every save and restore, JAX's backend probing). A command line module

    from flamingo_jax import console
    if __name__ == "__main__":
      console.capture()    # Before the imports that load TensorFlow and the backends.
    ...
    if __name__ == "__main__":
      console.run(main, log_path=lambda: ...)   # absl's app.run, then the logs to log_path.

From `capture()` on, the process's stderr (file descriptor 2) writes to a log file, while
Python's `sys.stderr` (tracebacks, tqdm's progress bars) stays on the console. Once the flags are
parsed, the log so far moves to `log_path()`, and every Python log record and warning joins it
there. With `--verbose` both go to the console instead, the captured lines first. Called as a
function (tests call `main`), a command line changes nothing of the process's streams.
"""

import atexit
import logging
import os
import pathlib
import sys
import tempfile
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the libraries' own logs (TensorFlow, XLA, "
                             "orbax, JAX) on the console instead of the log file.")

_captured: dict = {}  # The console's file descriptor and the capture file, once captured.


def capture() -> None:
  """From now on, native writes to stderr, Python log records and warnings go to a temporary
  file; `sys.stderr` keeps the console. Idempotent. Should the command line stop before its
  logs have a place (`--help`, a bad flag: nothing of theirs matters then), the file goes."""
  if _captured:
    return
  sys.stderr.flush()
  console = os.dup(2)
  fd, path = tempfile.mkstemp(prefix="flamingo_jax_", suffix=".log")
  os.dup2(fd, 2)
  os.close(fd)
  # Python's stderr writes to the console's descriptor, line-buffered as a terminal's is.
  sys.stderr = os.fdopen(console, "w", buffering=1, errors="backslashreplace", closefd=False)
  # Until `_start`, Python's records (import-time warnings) join the native lines, through the
  # same descriptor so that neither overwrites the other.
  handler = logging.StreamHandler(os.fdopen(2, "w", buffering=1, closefd=False))
  logging.getLogger().addHandler(handler)
  logging.captureWarnings(True)
  _captured.update(console=console, path=pathlib.Path(path), handler=handler)
  atexit.register(_captured["path"].unlink, missing_ok=True)


def verbose() -> bool:
  """Whether the libraries' logs go to the console (--verbose)."""
  return _VERBOSE.value


def _start(log_path: pathlib.Path) -> None:
  """Routes the libraries' logs to `log_path` (created with its folder), or with `--verbose`
  to the console."""
  root = logging.getLogger()
  root.removeHandler(absl_logging.get_absl_handler())
  root.removeHandler(_captured["handler"])
  if verbose():
    sys.stderr.write(_captured["path"].read_text())
    os.dup2(_captured["console"], 2)
    handler = logging.StreamHandler(sys.stderr)
  else:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
      log.write(_captured["path"].read_text())
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    handler = logging.FileHandler(log_path)
  _captured["path"].unlink()
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root.addHandler(handler)
  if not flags.FLAGS["verbosity"].present:  # absl's -v / --verbosity, when given, decides.
    absl_logging.set_verbosity(absl_logging.INFO)


def run(main: Callable[[list[str]], None], log_path: Callable[[], pathlib.Path]) -> None:
  """absl's `app.run(main)`, the libraries' logs routed to `log_path()` (read once the flags
  are parsed) from before `main` starts; should `main` fail, the console says where they are."""
  capture()

  def logged_main(argv):
    path = pathlib.Path(log_path())
    _start(path)
    try:
      return main(argv)
    except Exception:
      if not verbose():
        print(f"The libraries' logs: {path}", file=sys.stderr)
      raise

  app.run(logged_main)


def temporary_log(name: str) -> pathlib.Path:
  """Where a command line without a work directory keeps its log: the system's temp folder."""
  return pathlib.Path(tempfile.gettempdir()) / f"flamingo_jax_{name}.log"
