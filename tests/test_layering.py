"""The package's layers import downward only (the contracts in .importlinter, run by
import-linter), and the check does catch an upward import."""

import os
import pathlib
import shutil
import subprocess
import sys

from conftest import REPO

CONTRACTS = REPO / ".importlinter"
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")  # import-linter's CLI.


def lint_imports(root) -> subprocess.CompletedProcess:
  """import-linter on the package under `root` (found first on the path), no cache."""
  env = dict(os.environ, PYTHONPATH=str(root))
  return subprocess.run(
      [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(CONTRACTS)],
      cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layers_import_downward_only():
  result = lint_imports(REPO)
  assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_breaks_the_contract(tmp_path):
  shutil.copytree(REPO / "flamingo_jax", tmp_path / "flamingo_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  norms = tmp_path / "flamingo_jax" / "layers" / "norms.py"
  norms.write_text("from flamingo_jax.train import step  # An upward import.\n"
                   + norms.read_text())
  result = lint_imports(tmp_path)
  assert result.returncode != 0
  assert "flamingo_jax.layers is not allowed to import flamingo_jax.train" in result.stdout
  assert "flamingo_jax.layers.norms -> flamingo_jax.train.step" in result.stdout
