"""colabs/few_shot_demo.ipynb runs top to bottom in a Jupyter kernel of this interpreter, on the
CPU, on the model of the demo cut to a few steps of every stage."""

import sys

import nbclient
import nbformat
import pytest

from conftest import REPO, user_environment

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "colabs" / "few_shot_demo.ipynb"


def outputs(notebook, tag: str) -> list:
  (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
  return cell.outputs


def images(notebook, tag: str) -> int:
  return sum("image/png" in o.get("data", {}) for o in outputs(notebook, tag))


def stdout(notebook, tag: str) -> str:
  return "".join(o.text for o in outputs(notebook, tag)
                 if o.output_type == "stream" and o.name == "stdout")


def test_few_shot_notebook_runs_top_to_bottom(shrunk_demo, monkeypatch):
  workdir, _ = shrunk_demo  # The notebook loads the shrunk demo's model.
  user = user_environment()  # The kernel inherits this environment.
  monkeypatch.setenv("JAX_PLATFORMS", user["JAX_PLATFORMS"])
  if "XLA_FLAGS" in user:
    monkeypatch.setenv("XLA_FLAGS", user["XLA_FLAGS"])
  else:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("FLAMINGO_DEMO_WORKDIR", str(workdir))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get("outputs") for c in notebook.cells), "Store the notebook without outputs."
  # The kernel must be this interpreter (ipykernel installed here), not another Python's.
  notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)",
                                                  metadata={"tags": ["prefix"]}))
  # Raises CellExecutionError, with the cell's traceback, if any cell fails.
  nbclient.NotebookClient(notebook, kernel_name="python3", timeout=900,
                          resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

  assert stdout(notebook, "prefix").strip() == sys.prefix
  assert "Loaded" in stdout(notebook, "load") and "== " not in stdout(notebook, "load")
  assert images(notebook, "images") == 2
  assert stdout(notebook, "prompts").count("<image>") == 1 + 3 + 5 + 3 + 1
  answers = stdout(notebook, "generate").splitlines()
  assert len(answers) == 5 and all("truth:" in line for line in answers)
  assert images(notebook, "gates") == 1
  assert images(notebook, "attention") == 1
