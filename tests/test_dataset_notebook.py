"""notebooks/02_dataset_prep.ipynb under papermill, on the synthetic data and on the real BCCD
export: its report says what the data really holds and detectron2 loads every instance."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATASETS, run_notebook
from d2nb.data.synthetic import SyntheticSpec, make_synthetic_dataset

BCCD = SHARED_DATASETS / "bccd"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def outputs_of(notebook: dict) -> list:
    return [output for cell in notebook["cells"] if cell["cell_type"] == "code" for output in cell["outputs"]]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory, datasets_root):
    train_json, _ = make_synthetic_dataset(SyntheticSpec(), datasets_root)["train"]  # what the notebook will use
    before = sha256(train_json)
    folder = tmp_path_factory.mktemp("prep_synthetic")
    notebook = run_notebook("02_dataset_prep.ipynb", folder / "02.out.ipynb",
                            {"output_dir": folder / "out", "fix": True, "subset_size": 15}, timeout=900)
    return {"notebook": notebook, "out": folder / "out", "train_json": Path(train_json), "sha_before": before}


@pytest.fixture(scope="module")
def bccd_run(tmp_path_factory):
    train_json = BCCD / "train" / "_annotations.coco.json"
    before = sha256(train_json)
    folder = tmp_path_factory.mktemp("prep_bccd")
    notebook = run_notebook("02_dataset_prep.ipynb", folder / "02.out.ipynb",
                            {"dataset": str(BCCD), "output_dir": folder / "out", "fix": True}, timeout=900)
    return {"notebook": notebook, "out": folder / "out", "train_json": train_json, "sha_before": before}


def test_synthetic_report_and_loaded_instances_match_the_data(synthetic_run):
    summary = json.loads((synthetic_run["out"] / "validation_report.json").read_text())
    coco = json.loads(synthetic_run["train_json"].read_text())
    assert summary["dataset"] == "d2nb_synthetic_train" and summary["val"] == "d2nb_synthetic_val"
    assert Path(summary["json_file"]).resolve() == synthetic_run["train_json"].resolve()
    assert (summary["num_images"], summary["num_annotations"]) == (len(coco["images"]), len(coco["annotations"]))
    assert summary["has_masks"] is True and summary["ok"] is True
    assert summary["num_polygon_annotations"] == len(coco["annotations"])
    assert summary["num_categories"] == 4 and summary["unused_category_ids"] == []
    assert not any(summary["counts"].values())
    assert summary["loaded"] == {"images": len(coco["images"]), "instances": len(coco["annotations"])}
    assert summary["subset"]["images"] == 15


def test_fix_writes_into_output_dir_and_leaves_the_source_unchanged(synthetic_run):
    assert sha256(synthetic_run["train_json"]) == synthetic_run["sha_before"]
    fixed = json.loads((synthetic_run["out"] / "fixed.json").read_text())
    original = json.loads(synthetic_run["train_json"].read_text())
    assert fixed["annotations"] == original["annotations"]  # nothing needed fixing
    summary = json.loads((synthetic_run["out"] / "validation_report.json").read_text())
    assert Path(summary["fixed_json"]) == synthetic_run["out"] / "fixed.json"


def test_the_notebook_shows_the_browser_and_the_plots(synthetic_run):
    outputs = outputs_of(synthetic_run["notebook"])
    assert not [o for o in outputs if o["output_type"] == "error"]
    kinds = {kind for o in outputs for kind in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in kinds and "image/png" in kinds


def test_the_first_cell_prints_the_set_up_status_block(synthetic_run):
    first = next(c for c in synthetic_run["notebook"]["cells"] if c["cell_type"] == "code")
    text = "".join("".join(o.get("text", "")) for o in first["outputs"] if o["output_type"] == "stream")
    assert text.startswith("d2nb set-up in ") and ", already installed (" in text
    assert "\n  GPU         " in text and "\n  Drive       not mounted" in text


def test_bccd_report_holds_its_three_categories_one_unused_and_no_polygons(bccd_run):
    summary = json.loads((bccd_run["out"] / "validation_report.json").read_text())
    coco = json.loads(bccd_run["train_json"].read_text())
    assert summary["dataset"] == "bccd_train" and summary["val"] == "bccd_valid"
    assert summary["num_categories"] == len(coco["categories"]) == 3
    assert summary["unused_category_ids"] == [0]
    assert summary["counts"]["unused_category"] == 1
    assert {k: n for k, n in summary["counts"].items() if n} == {"unused_category": 1}
    assert summary["has_masks"] is False and summary["num_polygon_annotations"] == 0
    assert summary["class_names"] == ["rbc", "wbc"]  # the placeholder RBC-WBC is not a class
    assert summary["num_images"] == len(coco["images"]) == 210
    assert summary["loaded"] == {"images": len(coco["images"]), "instances": len(coco["annotations"])}
    subset = json.loads((bccd_run["out"] / "subset_20.json").read_text())
    assert summary["subset"]["images"] == 20 and summary["subset"]["instances"] == len(subset["annotations"])


def test_bccd_files_are_never_changed(bccd_run):
    assert sha256(bccd_run["train_json"]) == bccd_run["sha_before"]
    fixed = json.loads((bccd_run["out"] / "fixed.json").read_text())
    assert fixed == json.loads(bccd_run["train_json"].read_text())  # only a note: nothing to repair
