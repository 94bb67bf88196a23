"""Every notebook in colabs/ runs top to bottom on CPU in its smoke size, and is stored clean."""

import glob
import os

import nbformat
import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))


def test_there_are_notebooks():
  assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes_outside_the_repository(path, monkeypatch, tmp_path):
  """Run from a copy in an empty folder: a notebook needs the installed package, nothing of the
  checkout around it (as in Colab, or after `pip install .`)."""
  from nbclient import NotebookClient
  monkeypatch.setenv("FASTNETS_SMOKE", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("PYTHONPATH", raising=False)
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    assert "sys.path" not in cell.source, f"{path}: imports through a path, not the package"
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()


GENERATORS = sorted(glob.glob(os.path.join(REPO, "tools", "make_*.py")))


def test_every_notebook_has_a_generator_and_equals_its_output(tmp_path):
  """Each committed notebook is exactly what its generator in tools/ writes (edit the generator,
  then rerun it: `python tools/make_<name>_notebook.py`)."""
  import subprocess
  import sys
  env = dict(os.environ, FASTNETS_NOTEBOOK_DIR=str(tmp_path))
  for generator in GENERATORS:
    subprocess.run([sys.executable, generator], check=True, env=env, capture_output=True,
                   cwd=os.path.join(REPO, "tools"))
  written = sorted(os.listdir(tmp_path))
  assert written == sorted(os.path.basename(p) for p in NOTEBOOKS), "a notebook lacks a generator"
  for name in written:
    with open(tmp_path / name) as f, open(os.path.join(REPO, "colabs", name)) as g:
      assert f.read() == g.read(), f"colabs/{name} differs from its generator's output"
