"""The face case study notebook runs top to bottom in fast mode (MEM_TOOLKIT_FAST=1) and shows its table and figures."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "face_case_study.ipynb"


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert "parameters" in notebook.cells[0].metadata.get("tags", [])
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_in_fast_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("MEM_TOOLKIT_FAST", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", f"{NOTEBOOK.parents[1]}:{os.environ.get('PYTHONPATH', '')}")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| Clean |" in markdown and "| MEM-5 |" in markdown and "| MEM-3 trigger-only |" in markdown
    assert "mem-tiny-rn top-1" in markdown and "mem-tiny-vit top-1" in markdown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "MEM-3 top-1 <= 2x chance" in printed
    assert (tmp_path / "runs" / "face_case_study-fast" / "results.json").is_file()
