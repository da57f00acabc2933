"""A command line's console holds its own lines; the libraries' logs go to its log file, or with
--verbose to the console."""

import subprocess
import sys
import textwrap

from conftest import REPO, user_environment

# A command line as the package's are: capture, then the libraries' native and Python logs.
PROGRAM = textwrap.dedent("""
    import os, pathlib, sys
    from flamingo_jax import console
    console.capture()
    os.write(2, b"I0000 cuda_stub.cc:31] native notice at import\\n")
    from absl import logging

    def main(argv):
      os.write(2, b"E0000 cuda_platform.cc:52] native error after start\\n")
      logging.info("a library's INFO record")
      print("own line")
      print("progress bar", file=sys.stderr)

    console.run(main, lambda: pathlib.Path(sys.argv[1]))
""")


def run(tmp_path, *flags):
  log = tmp_path / "logs" / "run.log"
  result = subprocess.run([sys.executable, "-c", PROGRAM, str(log), *flags], cwd=REPO,
                          env=user_environment(), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return result, log


def test_library_logs_go_to_the_log_file(tmp_path):
  result, log = run(tmp_path)
  assert result.stdout == "own line\n"
  assert result.stderr == "progress bar\n"
  text = log.read_text()
  for line in ["native notice at import", "native error after start", "a library's INFO record"]:
    assert line in text


def test_verbose_prints_them_on_the_console(tmp_path):
  result, log = run(tmp_path, "--verbose")
  assert result.stdout == "own line\n"
  for line in ["native notice at import", "native error after start", "a library's INFO record",
               "progress bar"]:
    assert line in result.stderr
  assert not log.exists()
