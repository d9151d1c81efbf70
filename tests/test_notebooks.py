"""The notebooks are committed executed (normal mode) with their figures, and every one still
executes top to bottom in fast mode, without a warning, and without being written back."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "notebooks"))
from execute import TIME_LINE, stderr_outputs  # noqa: E402


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "01_vae",
        "02_posterior_families",
        "03_pixelcnn",
        "04_pixelvae",
        "05_representations",
        "06_evaluation",
        "07_disentanglement",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_executed_with_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # every cell ran, once, top to bottom, in one kernel
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
    assert not [o for o in outputs if o.output_type == "error"]
    assert not stderr_outputs(nb), stderr_outputs(nb)  # no warning in any cell
    assert nb.cells[0].source.splitlines()[2].startswith(TIME_LINE)  # how long it takes


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_GENMODELS_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    assert not stderr_outputs(nb), stderr_outputs(nb)
    assert path.read_bytes() == before  # not written back
