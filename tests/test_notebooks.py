"""Every notebook in notebooks/ runs headless, top to bottom, on small settings (a notebook that
raises fails the suite), and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO, sqlite_uri

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def small_settings(sweep, data_root) -> dict[str, str]:
    """Environment of the notebook kernels: the real MNIST copy, t-SNE maps of 300 images, and
    the tracking store of the shared small sweep (see conftest.py)."""
    folder, _, _ = sweep
    return {"MNIST_DATA_ROOT": str(data_root), "MNIST_TSNE_SIZES": "300",
            "MLFLOW_TRACKING_URI": sqlite_uri(folder), "MNIST_BENCH_EXPERIMENT": "mnist_bench"}


def test_the_notebooks_are_found():
    assert {"01_explore_mnist.ipynb", "02_compare_runs.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless(path: Path, small_settings, monkeypatch):
    for name, value in small_settings.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    notebook = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    images = [out for cell in notebook.cells for out in cell.get("outputs", [])
              if out.output_type == "display_data" and "image/png" in out.data]
    assert images, "no figure was shown as an image"
