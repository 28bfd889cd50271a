"""The package's name and the clash check: another project's ``ebm`` first on sys.path is refused with a message.

ebmkit (and the unrelated ``ebm`` distribution on the package index) install an import package named ``ebm``
too. This project's carries ``ebm.__distribution__``; ``train.py`` and the first import cell of every notebook
check it before importing anything else of ``ebm``. The tests put a fake ``ebm`` (a package without the marker)
first on sys.path in a fresh interpreter and expect that message, naming the fake's path, instead of a traceback
from deep inside an import.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import ebm

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = "another package named ebm is imported from"


@pytest.fixture
def fake_ebm(tmp_path: Path) -> Path:
    """A folder holding a package ``ebm`` that is not this project's (no ``__distribution__``, no subpackages)."""
    (tmp_path / "fake" / "ebm").mkdir(parents=True)
    (tmp_path / "fake" / "ebm" / "__init__.py").write_text('"""Another project\'s package named ebm."""\n')
    return tmp_path / "fake"


def test_the_marker_names_the_distribution_of_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert ebm.__distribution__ == project["name"] != "ebm"  # `ebm` on the package index is another project
    extras = [extra for extras in project["optional-dependencies"].values() for extra in extras]
    assert not any(extra.startswith("ebm[") for extra in extras)  # self-references use the distribution's name


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH (keep the script's folder off sys.path)")
def test_train_py_refuses_another_ebm_first_on_the_path(fake_ebm):
    # PYTHONSAFEPATH keeps the repository (train.py's folder) off sys.path, so PYTHONPATH's fake comes first: the
    # situation of an installed ebmkit shadowing the editable install of this project.
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": str(fake_ebm)}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", "pinwheel"], env=env, cwd=fake_ebm,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert MESSAGE in result.stderr and str(fake_ebm / "ebm") in result.stderr, result.stderr
    assert "ebmkit" in result.stderr and "separate environment" in result.stderr
    assert "Traceback" not in result.stderr


def _first_ebm_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if c.cell_type == "code" and "ebm" in c.source)


def test_every_notebook_refuses_another_ebm_in_its_first_import_cell(fake_ebm):
    cells = {path.name: _first_ebm_cell(path) for path in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert len(cells) == 4
    # One interpreter runs each cell with the fake first on sys.path and reports what the cell raised.
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(fake_ebm)!r})\n"
        "raised = {}\n"
        "for name, source in json.loads(sys.stdin.read()).items():\n"
        "    sys.modules.pop('ebm', None)\n"
        "    try:\n"
        "        exec(source, {'THREADS': 1})\n"
        "        raised[name] = None\n"
        "    except Exception as error:\n"
        "        raised[name] = [type(error).__name__, str(error)]\n"
        "print(json.dumps(raised))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(cells), cwd=fake_ebm,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr
    for name, (kind, message) in json.loads(result.stdout.splitlines()[-1]).items():
        assert kind == "ImportError" and MESSAGE in message and str(fake_ebm / "ebm") in message, (name, message)
