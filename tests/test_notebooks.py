"""The notebooks execute top to bottom at small settings, and the committed copies carry their outputs.

Each notebook reads two environment variables in its parameter cell: ``EBM_NOTEBOOK_SMALL=1`` shrinks
sizes and epochs so it runs in well under two minutes, and ``EBM_NOTEBOOK_OUT`` says where its runs go.
The notebooks assert their own claims (finite KL columns, perplexity ratios), so executing them is a test.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 3_000_000


def test_the_four_comparison_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_executed_and_small(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, "a notebook without code"
    assert all(cell.get("execution_count") for cell in code_cells), "commit notebooks executed, in order"
    assert any(
        output.get("output_type") == "display_data" for cell in code_cells for output in cell.get("outputs", [])
    ), "the committed notebook shows no figure"
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_small_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("EBM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("EBM_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
