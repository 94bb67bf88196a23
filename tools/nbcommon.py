"""Shared pieces of the notebook generators (`tools/make_*.py`).

Each generator keeps a notebook's cells as reviewable Python and writes `colabs/<name>.ipynb`
without outputs; `tests/test_notebooks.py` executes every notebook with `FASTNETS_SMOKE=1`.
"""
import os

import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PREAMBLE = (
    "# Install fastnets where it is missing (a fresh Colab runtime): from the checkout this\n"
    "# notebook sits in, else from FASTNETS_SOURCE (a pip source: the repository's git URL as\n"
    "# 'git+https://...', or a path to a checkout).\n"
    "try:\n"
    "  import fastnets\n"
    "except ImportError:\n"
    "  import subprocess\n"
    "  source = '..' if os.path.exists('../setup.py') else os.environ.get('FASTNETS_SOURCE')\n"
    "  if not source:\n"
    "    raise RuntimeError('fastnets is not installed: set FASTNETS_SOURCE to the repository '\n"
    "                       '(git+https://... or a path) and rerun this cell.')\n"
    "  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', source], check=True)\n"
    "SMOKE = os.environ.get('FASTNETS_SMOKE') == '1'\n")


def setup_cell(first_imports: str, rest: str):
  """The first code cell: `first_imports` (must import os and sys), the repository path, the
  SMOKE switch, then `rest` (the notebook's own imports)."""
  if "os" not in first_imports or "sys" not in first_imports:
    raise ValueError(f"setup_cell: first_imports must import os and sys, got {first_imports!r}")
  return code(first_imports + "\n" + _PREAMBLE + rest)


def write(cells, filename: str) -> str:
  """Writes the cells as `colabs/<filename>` (Python 3 kernel metadata); returns the path.

  Cell ids are numbered rather than random, so regenerating an unchanged notebook changes nothing.
  """
  for i, cell in enumerate(cells):
    cell["id"] = f"cell-{i:03d}"
  nb = nbf.v4.new_notebook(cells=cells, metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"}})
  # FASTNETS_NOTEBOOK_DIR redirects the output (the test that compares the committed notebooks
  # with their generators' output writes elsewhere).
  out = os.path.join(os.environ.get("FASTNETS_NOTEBOOK_DIR") or os.path.join(REPO_ROOT, "colabs"),
                     filename)
  nbf.write(nb, out)
  print("wrote", out)
  return out
