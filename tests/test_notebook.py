"""colabs/few_shot_demo.ipynb runs top to bottom in a Jupyter kernel of this interpreter, on the
CPU, training its model with the demo cut to a few steps of every stage."""

import os
import sys

import nbclient
import nbformat

from conftest import REPO

NOTEBOOK = REPO / "colabs" / "few_shot_demo.ipynb"
# The demo's config fields (configs/demo.py) that size its stages: a few steps each.
FEW_STEPS = [
    "--config.lm_pretraining.num_steps=3", "--config.lm_pretraining.log_every=1",
    "--config.lm_pretraining.optimizer.warmup_steps=1",
    "--config.train.num_steps=3", "--config.train.log_every=1",
    "--config.contrastive.num_steps=3", "--config.contrastive.log_every=1",
    "--config.contrastive.warmup_steps=1", "--config.contrastive.batch_size=8",
    "--config.demo.eval.num_queries=2", "--config.demo.eval.num_support=4",
    "--config.demo.eval.batch_size=2", "--config.demo.eval.shots=(0,2)",
    "--config.demo.eval.max_new_tokens.synthetic_caption=3",
    "--config.demo.eval.max_new_tokens.synthetic_vqa=3",
    "--config.demo.eval.max_new_tokens.synthetic_binding=3"]


def outputs(notebook, tag: str) -> list:
  (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
  return cell.outputs


def images(notebook, tag: str) -> int:
  return sum("image/png" in o.get("data", {}) for o in outputs(notebook, tag))


def stdout(notebook, tag: str) -> str:
  return "".join(o.text for o in outputs(notebook, tag)
                 if o.output_type == "stream" and o.name == "stdout")


def test_few_shot_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  # The kernel inherits this environment. One CPU device: no test mesh (conftest's eight).
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  xla_flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "").strip()
  if xla_flags:
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
  else:  # XLA reads a blank XLA_FLAGS as a file name.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("FLAMINGO_DEMO_WORKDIR", str(tmp_path / "demo"))
  monkeypatch.setenv("FLAMINGO_DEMO_FLAGS", " ".join(FEW_STEPS))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get("outputs") for c in notebook.cells), "Store the notebook without outputs."
  # The kernel must be this interpreter (ipykernel installed here), not another Python's.
  notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)",
                                                  metadata={"tags": ["prefix"]}))
  # Raises CellExecutionError, with the cell's traceback, if any cell fails.
  nbclient.NotebookClient(notebook, kernel_name="python3", timeout=900,
                          resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

  assert stdout(notebook, "prefix").strip() == sys.prefix
  assert "== 3/4" in stdout(notebook, "load")  # The demo ran and trained the model.
  assert (tmp_path / "demo" / "flamingo" / "export").is_dir()
  assert images(notebook, "images") == 2
  assert stdout(notebook, "prompts").count("<image>") == 1 + 3 + 5 + 3 + 1
  answers = stdout(notebook, "generate").splitlines()
  assert len(answers) == 5 and all("truth:" in line for line in answers)
  assert images(notebook, "gates") == 1
  assert images(notebook, "attention") == 1
