"""One set of parameter names: each notebook's parameters cell is the source, the README's table
says the same, and a name papermill injects that the cell does not declare stops the notebook
with a did-you-mean."""

import json
import re
import subprocess
import sys

import pytest

from conftest import NOTEBOOKS, ROOT
from d2nb.errors import D2nbError
from d2nb.notebook_parameters import check_parameters, parameter_names

NOTEBOOK_NAMES = sorted(path.stem for path in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
ROW = re.compile(r"^\| `notebooks/(?P<name>[\w]+)\.ipynb` \|.*\| (?P<parameters>[^|]+) \|$")


def readme_table() -> dict:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = re.findall(r"`(\w+)`", match["parameters"])
    return rows


def test_the_readme_table_lists_every_notebook_with_the_names_of_its_parameters_cell():
    table = readme_table()
    assert sorted(table) == NOTEBOOK_NAMES
    for name in NOTEBOOK_NAMES:
        assert table[name] == parameter_names(NOTEBOOKS / f"{name}.ipynb"), name


def test_dataset_means_the_same_in_the_notebooks_that_take_one():
    having = [name for name in NOTEBOOK_NAMES if "dataset" in parameter_names(NOTEBOOKS / f"{name}.ipynb")]
    assert {"02_dataset_prep", "03_train", "04_evaluate"} <= set(having)


def test_every_notebook_checks_its_parameters_in_the_cell_after_the_parameters_cell():
    for name in NOTEBOOK_NAMES:
        cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
        index = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert f'check_parameters("{name}")' in "".join(cells[index + 1]["source"]), name


def test_the_prepare_command_has_a_flag_for_every_parameter_of_02():
    completed = subprocess.run([sys.executable, "-m", "d2nb", "data", "prepare", "--help"],
                               capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    for name in parameter_names(NOTEBOOKS / "02_dataset_prep.ipynb"):
        flag = name if name == "dataset" else "--" + name.replace("_", "-")
        assert flag in completed.stdout, flag


def test_check_parameters_reads_the_kernel_history():
    parameters_cell = 'dataset = "synthetic"  # a comment\nname = None\noutput_dir = "runs/x"\n'
    check_parameters("02_dataset_prep", ["", "import d2nb", parameters_cell, '# Parameters\nname = "bccd"\n', ""])
    check_parameters("02_dataset_prep", ["", parameters_cell, "print(1)"])  # not papermill: nothing to check
    with pytest.raises(D2nbError) as error:
        check_parameters("02_dataset_prep", ["", parameters_cell, '# Parameters\nsource = "x"\nname = "y"\n', ""])
    assert error.value.problem == "unknown parameter 'source' for 02_dataset_prep"
    assert error.value.fix == "did you mean 'dataset'? The parameters are: dataset, name, output_dir"
    with pytest.raises(D2nbError, match="did you mean 'output_dir'"):
        check_parameters("02_dataset_prep", ["", parameters_cell, "# Parameters\noutput_dri = 'x'\n", ""])


@pytest.fixture(scope="module")
def unknown_source_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unknown_parameter")
    runs = {}
    for name in NOTEBOOK_NAMES:
        output = folder / f"{name}.out.ipynb"
        completed = subprocess.run(
            [sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{name}.ipynb"), str(output), "--cwd", str(ROOT),
             "-k", "python3", "--no-progress-bar", "-p", "source", "X"],
            capture_output=True, text=True, timeout=600)
        runs[name] = (completed, json.loads(output.read_text()))
    return runs


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_an_unknown_parameter_stops_the_notebook_with_a_did_you_mean(unknown_source_runs, name):
    completed, notebook = unknown_source_runs[name]
    assert completed.returncode != 0
    errors = [(index, output) for index, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"
              for output in cell.get("outputs", []) if output["output_type"] == "error"]
    assert len(errors) == 1
    index, error = errors[0]
    assert "check_parameters" in "".join(notebook["cells"][index]["source"])
    text = "\n".join(error["traceback"])
    assert f"unknown parameter 'source' for {name} | Fix: did you mean '" in text, text
    assert "The parameters are: " + ", ".join(parameter_names(NOTEBOOKS / f"{name}.ipynb")) in text
    assert len(error["traceback"]) == 1  # one line, not a traceback through d2nb
