"""Every curated notebook: committed clean (no outputs, parameters cell first, only library calls), and executed in fast mode."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from mem_toolkit.notebooks import FAST_ENV, FIGURES_ENV, RUN_DIR_ENV, execute_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_quickstart", "02_training_curves", "03_transferability", "04_attention_maps", "05_tsne", "06_explorer", "07_robustness",
         "face_case_study"]
# How each notebook is pointed at the user's own data (in its parameters cell, explained in its first markdown cell).
YOUR_DATA = {"face_case_study": ["DATA"]}
# Statements that would make a notebook hold algorithm code instead of calling the library.
NOT_IN_NOTEBOOKS = re.compile(r"^\s*(def|class|for|while|with|try|lambda)\b|^\s*import torch|\.backward\(", re.MULTILINE)


def _code(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_the_curated_notebooks_are_all_here():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean_with_a_parameters_cell_and_only_library_calls(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells), "commit notebooks without outputs"
    assert code_cells[0].metadata.get("tags") == ["parameters"]
    parameters = code_cells[0].source
    assert FAST_ENV in parameters
    for variable in YOUR_DATA.get(name, ["TRAIN_CSV", "TEST_CSV"]):
        assert f"\n{variable} = " in parameters
        assert notebook.cells[0].cell_type == "markdown" and f"`{variable}`" in notebook.cells[0].source  # how to use your own data
    assert notebook.metadata.kernelspec.name == "python3"
    for source in _code(notebook):
        assert not NOT_IN_NOTEBOOKS.search(source), f"algorithm code in {name}: {source[:200]}"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run a notebook in fast mode; all notebooks share one cache folder, as they do for a user."""
    cache = tmp_path_factory.mktemp("notebook-cache")
    out = tmp_path_factory.mktemp("executed")

    def run(name: str):
        run = execute_notebook(NOTEBOOKS / f"{name}.ipynb", out, fast=True, timeout=600,
                               env={RUN_DIR_ENV: str(cache), FIGURES_ENV: str(out / "figures"), "OMP_NUM_THREADS": "1"})
        assert run.ok, run.error
        assert run.html.stat().st_size > 10_000 and "<html" in run.html.read_text()[:2000].lower()
        return nbformat.read(run.executed, as_version=4), out / "figures"

    return run


def _outputs(notebook, mime: str) -> list:
    return [output["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if mime in output.get("data", {})]


def _table_rows(markdown: str) -> list[str]:
    return [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000


def test_quickstart(executed):
    notebook, figures = executed("01_quickstart")
    assert _written(figures / "quickstart_protection.png") and len(_outputs(notebook, "image/png")) == 1
    [table] = _outputs(notebook, "text/markdown")
    assert _table_rows(table) == ["clean", "mem-3", "random guess"]


def test_training_curves(executed):
    notebook, figures = executed("02_training_curves")
    assert (figures / "training_curves.pdf").read_bytes().startswith(b"%PDF") and len(_outputs(notebook, "image/png")) == 1
    [table] = _outputs(notebook, "text/markdown")
    assert _table_rows(table) == ["clean", "EM", "MEM-3", "random guess"]


def test_transferability(executed):
    notebook, figures = executed("03_transferability")
    assert _written(figures / "transfer.png") and len(_outputs(notebook, "image/png")) == 1
    saved = json.loads((figures / "transfer" / "transfer.json").read_text())
    assert saved["surrogates"] == saved["hackers"] == ["mem-tiny-rn", "mem-tiny-vit"]
    [table] = _outputs(notebook, "text/markdown")
    grid = table.split("\n\n**Every run")[0]
    assert "| surrogate \\ hacker | mem-tiny-rn | mem-tiny-vit |" in grid
    assert _table_rows(grid) == ["surrogate \\ hacker", "surrogate mem-tiny-rn", "surrogate mem-tiny-vit", "clean data (no protection)", "random guess"]


def test_attention_maps(executed):
    notebook, figures = executed("04_attention_maps")
    assert _written(figures / "attention_gradcam.png") and _written(figures / "attention_tokens.png")
    assert len(_outputs(notebook, "image/png")) == 2


def test_tsne(executed):
    notebook, figures = executed("05_tsne")
    assert _written(figures / "tsne.png") and len(_outputs(notebook, "image/png")) == 1


def test_robustness(executed):
    notebook, figures = executed("07_robustness")
    assert _written(figures / "robustness.png") and len(_outputs(notebook, "image/png")) == 1
    [tables] = _outputs(notebook, "text/markdown")
    assert _table_rows(tables.split("\n\n")[0]) == ["i2t: R@1 / R@10 / MedR", "clean", "mem-3", "random guess"]
    assert "| t2i: R@1 / R@10 / MedR | none | jpeg75 | crop-flip | protected50 | pretrained |" in tables


def test_explorer(executed):
    notebook, _ = executed("06_explorer")
    assert _outputs(notebook, "application/vnd.jupyter.widget-view+json")
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    html = [model["state"]["value"] for model in state.values() if model["model_name"] == "HTMLModel"]
    captions = [value for value in html if "mem-trigger-token" in value]
    assert len(captions) == 1 and [item.count("mem-trigger-token") for item in re.findall(r"<li>(.*?)</li>", captions[0])] == [3] * 4
    assert any("random guess" in value for value in html)
    images = [model for model in state.values() if model["model_name"] == "ImageModel"]
    assert len(images) == 2


def test_face_case_study(executed):
    notebook, _ = executed("face_case_study")
    tables = "".join(_outputs(notebook, "text/markdown"))
    for row in ("Clean", "MEM-3", "MEM-5", "MEM-3 trigger-only", "MEM-3 noise-only", "chance"):
        assert f"| {row} |" in tables
    assert "mem-tiny-rn top-1" in tables and "mem-tiny-vit top-1" in tables
    assert len(_outputs(notebook, "image/png")) == 5  # two protections' examples, curves, Grad-CAM, Integrated Gradients
    assert "MEM-3 top-1 <= 2x chance" in "".join(_outputs(notebook, "text/plain"))


def test_runner_reports_a_failing_cell_keeps_its_output_and_exits_1(tmp_path, capsys):
    from mem_toolkit.notebooks import main

    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('before')"), nbformat.v4.new_code_cell("raise ValueError('boom')")])
    broken.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(broken, tmp_path / "broken.ipynb")
    run = execute_notebook(tmp_path / "broken.ipynb", tmp_path / "out", env={"OMP_NUM_THREADS": "1"})
    assert not run.ok and "ValueError: boom" in run.error
    executed = nbformat.read(run.executed, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n" and executed.cells[1].outputs[0]["ename"] == "ValueError"
    assert "boom" in run.html.read_text()
    assert main([str(tmp_path / "broken.ipynb"), "--out", str(tmp_path / "cli")]) == 1
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())[0]["error"]
    assert main([str(tmp_path / "missing.ipynb")]) == 2
    assert "missing.ipynb" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="ipykernel install"):
        execute_notebook(tmp_path / "broken.ipynb", tmp_path / "out", kernel_name="no-such-kernel")
