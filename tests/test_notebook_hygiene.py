"""Every committed notebook: no outputs, a parameters cell, a kernelspec, short cells calling d2nb."""

import nbformat
import pytest

from conftest import NOTEBOOKS

NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))
MAX_CODE_LINES = 25  # logic longer than this belongs in d2nb, not in a cell


def test_the_notebooks_exist():
    assert "03_train.ipynb" in [p.name for p in NOTEBOOK_FILES]


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs committed"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one 'parameters'-tagged cell"
    assert "setup_notebook()" in code[0].source, "first code cell must make Colab/fresh kernels ready"
    for cell in code:
        if cell is not tagged[0]:
            assert len(cell.source.strip().splitlines()) <= MAX_CODE_LINES, cell.source[:200]
    assert any("d2nb" in c.source for c in code[1:] if c is not tagged[0])
    # a markdown cell says why before each step
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= len(code) // 2
