"""The whole training notebook run twice in one real Jupyter kernel, as a user does with
"Run All" after a first run: no error, and nothing registered, hooked or logged twice."""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from conftest import metrics_rows

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, logging
from detectron2.data import DatasetCatalog
print(json.dumps({
    "datasets": sorted(DatasetCatalog.list()),
    "handlers": {name: len(logging.getLogger(name).handlers) for name in ("detectron2", "d2nb", "fvcore")},
}))
"""


def _probe(client, nb) -> dict:
    cell = nbformat.v4.new_code_cell(PROBE)
    nb.cells.append(cell)
    client.execute_cell(cell, len(nb.cells) - 1)
    text = "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")
    return json.loads(text.strip().splitlines()[-1])


def test_run_all_twice_in_one_kernel(tmp_path):
    output_dir = tmp_path / "run"
    nb = load_notebook_node(str(ROOT / "notebooks" / "03_train.ipynb"))  # as papermill reads it
    nb = parameterize_notebook(nb, {"gpus": 0, "output_dir": str(output_dir), "max_iter": 6, "ims_per_batch": 2})
    client = NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(ROOT)}})
    code_cells = [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    seen = []
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in code_cells:  # raises CellExecutionError on any error output
                client.execute_cell(cell, index)
            assert not [o for _, c in code_cells for o in c.outputs if o.get("output_type") == "error"]
            seen.append(_probe(client, nb))
            assert metrics_rows(output_dir)[-1].get("segm/AP") is not None  # trained and evaluated
    first, second = seen
    assert second == first, "running the notebook again registered or hooked something twice"
    assert any(name.startswith("d2nb_synthetic") for name in first["datasets"])
    iterations = [row["iteration"] for row in metrics_rows(output_dir) if "total_loss" in row]
    assert iterations == sorted(set(iterations)), "the second run appended to the first run's metrics"
