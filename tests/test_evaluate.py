"""Evaluation on real data: a box model trained here for a minute on BCCD blood cells, scored on
its valid split (API, results viewer) and its test split (``d2nb evaluate``); and every bad
input answered with a D2nbError naming the value and the fix."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATASETS
from d2nb.analysis import load_detections
from d2nb.errors import D2nbError
from d2nb.evaluate import EvaluationSettings, evaluate, format_report, load_evaluation
from d2nb.train import TrainSettings, train
from d2nb.zoo import CPU_RECIPE

BCCD = SHARED_DATASETS / "bccd"
PLACEHOLDER = "RBC-WBC"  # category id 0 of the export: no box uses it, left out of the classes


@pytest.fixture(scope="module")
def bccd_model(tmp_path_factory):
    """A box model (BCCD has no masks) from d2nb's CPU recipe: ~1-2 minutes on two cores."""
    output = tmp_path_factory.mktemp("bccd") / "train"
    train(TrainSettings(gpus=0, dataset=str(BCCD), config=CPU_RECIPE, weights="none", output_dir=str(output),
                        max_iter=40, checkpoint_period=1000, monitor=False))
    return output


@pytest.fixture(scope="module")
def bccd_evaluation(bccd_model, tmp_path_factory):
    output = tmp_path_factory.mktemp("bccd-eval") / "evaluation"
    return evaluate(EvaluationSettings(config=str(bccd_model), dataset=str(BCCD), gpus=0, output_dir=str(output),
                                       progress=False))


def test_per_category_ap_for_rbc_and_wbc_and_no_placeholder_class(bccd_evaluation):
    boxes = bccd_evaluation.metrics["bbox"]
    assert list(bccd_evaluation.metrics) == ["bbox"], "a box-only dataset is scored on boxes only"
    assert math.isfinite(boxes["AP-rbc"]) and math.isfinite(boxes["AP-wbc"]), boxes
    assert sorted(k for k in boxes if k.startswith("AP-")) == ["AP-rbc", "AP-wbc"]
    assert not [n for n in bccd_evaluation.notes if PLACEHOLDER in n]
    assert not any("rbc'" in n or "wbc'" in n for n in bccd_evaluation.notes)


def test_the_report_holds_detectron2s_tables_then_the_notes(bccd_evaluation):
    report = format_report(bccd_evaluation)
    table = bccd_evaluation.tables["bbox"]
    # detectron2's own layout; tabulate widens the AP column when AP reaches 10
    assert re.match(r"Evaluation results for bbox: \n\| +AP +\| +AP50 +\| +AP75 +\| +APs +\| +APm +\| +APl +\|\n", table), table
    assert "Per-category bbox AP: \n| category   | AP" in table  # three (category, AP) column pairs
    assert table.count("| category ") == 2
    assert re.search(r"\| rbc +\| [0-9.]+ +\| wbc +\| [0-9.]+ +\|", table), table
    assert PLACEHOLDER not in table
    assert table in report and ("Notes:" not in report or report.index(table) < report.index("Notes:"))
    log = (Path(bccd_evaluation.output_dir) / "log.txt").read_text()
    assert "Per-category bbox AP" in log


def test_output_dir_holds_results_and_metrics_scored_against_the_valid_split(bccd_evaluation):
    out = Path(bccd_evaluation.output_dir)
    assert (out / "inference" / "instances_predictions.pth").is_file()
    results = load_detections(out / "inference" / "coco_instances_results.json")
    assert results and {r["category_id"] for r in results} <= {1, 2}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["bbox"] == pytest.approx(bccd_evaluation.metrics["bbox"], nan_ok=True)
    scored = json.loads(Path(saved["gt_json"]).read_text())  # the valid split without the placeholder
    original = json.loads((BCCD / "valid" / "_annotations.coco.json").read_text())
    assert scored["annotations"] == original["annotations"] and scored["images"] == original["images"]
    assert [c["name"] for c in scored["categories"]] == ["rbc", "wbc"]
    again = load_evaluation(out)
    assert again.tables == bccd_evaluation.tables and again.notes == bccd_evaluation.notes
    assert again.class_names == ["rbc", "wbc"]


def test_results_viewer_filters_the_gallery_by_class_and_steps_through_it(bccd_evaluation):
    from d2nb.widgets.evaluation import ALL_CLASSES, ResultsViewer

    viewer = ResultsViewer(bccd_evaluation.output_dir, score_threshold=0.05)
    assert list(viewer.task.options) == ["bbox"]
    assert "Per-category bbox AP" in viewer.tables.value and PLACEHOLDER not in viewer.tables.value
    assert bytes(viewer.chart.value).startswith(b"\x89PNG")
    everything = list(viewer.images)
    assert everything and bytes(viewer.gallery.value).startswith(b"\x89PNG")
    assert [m.errors() for m in everything] == sorted((m.errors() for m in everything), reverse=True)
    viewer.class_filter.value = "wbc"
    wbc = 1  # class index: rbc 0, wbc 1 (the placeholder is not a class)
    assert viewer.images and all(m.errors(wbc) > 0 for m in viewer.images)
    assert [m.errors(wbc) for m in viewer.images] == sorted((m.errors(wbc) for m in viewer.images), reverse=True)
    first = viewer.current
    viewer.next.click()
    assert viewer.index == (1 if len(viewer.images) > 1 else 0)
    viewer.previous.click()
    assert viewer.current is first and viewer.position.value.startswith(f"1/{len(viewer.images)}")
    viewer.class_filter.value = ALL_CLASSES
    viewer.score_threshold.value = 1.0  # nothing kept: every object is missed
    objects = json.loads((BCCD / "valid" / "_annotations.coco.json").read_text())["annotations"]
    assert sum(m.missed() for m in viewer.images) == len(objects)
    assert sum(m.false_positives() for m in viewer.images) == 0


def test_command_line_evaluates_the_test_split_like_train_net_eval_only(bccd_model, tmp_path):
    out = tmp_path / "cli"
    test_json = BCCD / "test" / "_annotations.coco.json"
    completed = subprocess.run(
        [sys.executable, "-m", "d2nb", "evaluate", "--config-file", str(bccd_model / "config.yaml"),
         "--dataset", str(test_json), "--output", str(out), "--num-gpus", "0",
         "MODEL.WEIGHTS", str(bccd_model / "model_final.pth")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Per-category bbox AP" in completed.stdout + completed.stderr
    assert PLACEHOLDER not in completed.stdout
    saved = json.loads((out / "metrics.json").read_text())
    scored = json.loads(Path(saved["gt_json"]).read_text())
    assert scored["annotations"] == json.loads(test_json.read_text())["annotations"]
    assert math.isfinite(saved["bbox"]["AP-rbc"]) and math.isfinite(saved["bbox"]["AP-wbc"])
    assert (out / "inference" / "coco_instances_results.json").is_file()


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture
def some_weights(tmp_path):
    path = tmp_path / "some.pth"
    path.write_bytes(b"not read before the inputs are checked")
    return str(path)


def _settings(tmp_path, **values):
    defaults = dict(config=CPU_RECIPE, dataset="synthetic", gpus=0, output_dir=str(tmp_path / "out"), progress=False)
    return EvaluationSettings(**{**defaults, **values})


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(D2nbError, match="missing.pth' does not exist") as error:
        evaluate(_settings(tmp_path, weights=str(tmp_path / "missing.pth")))
    assert "Fix:" in str(error.value)


def test_a_config_without_weights_asks_for_them(tmp_path):
    with pytest.raises(D2nbError, match="empty MODEL.WEIGHTS") as error:
        evaluate(_settings(tmp_path))
    assert "weights=" in error.value.fix


def test_no_training_run_to_default_to(tmp_path):
    with pytest.raises(D2nbError, match="newest training run") as error:
        evaluate(_settings(tmp_path, config=None, runs_root=str(tmp_path / "runs")))
    assert "03_train" in error.value.fix


def test_an_unknown_dataset_is_named(tmp_path, some_weights):
    with pytest.raises(D2nbError, match="'no_such_dataset'"):
        evaluate(_settings(tmp_path, weights=some_weights, dataset="no_such_dataset"))


def test_an_output_dir_that_cannot_be_written(tmp_path, some_weights):
    with pytest.raises(D2nbError, match="cannot write into output_dir '/proc/d2nb-evaluation'"):
        evaluate(_settings(tmp_path, weights=some_weights, output_dir="/proc/d2nb-evaluation"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(D2nbError, match="is a file"):
        evaluate(_settings(tmp_path, weights=some_weights, output_dir=str(tmp_path / "a-file")))


def test_the_training_runs_own_folder_is_refused(bccd_model):
    with pytest.raises(D2nbError, match="training run's folder") as error:
        evaluate(EvaluationSettings(config=str(bccd_model), dataset=str(BCCD), gpus=0, output_dir=str(bccd_model)))
    assert "evaluation" in error.value.fix


def test_a_checkpoint_for_other_classes_is_refused(bccd_model, tmp_path):
    # a BCCD model (3 classes) on the synthetic shapes (4 classes)
    with pytest.raises(D2nbError, match="trained for other classes") as error:
        evaluate(EvaluationSettings(config=str(bccd_model), dataset="synthetic", gpus=0,
                                    output_dir=str(tmp_path / "out"), progress=False))
    assert "4 classes (circle" in str(error.value)


@pytest.mark.parametrize("tile, overlap, message", [
    (1024, 0.25, r"tile=1024 is larger than '.*00000\.png' \(512 x 512 px\)"),
    (-128, 0.25, r"tile=-128 is not a tile size in pixels"),
    (128, 1.0, r"tile_overlap=1.0 is outside \[0, 1\)"),
])
def test_a_tile_that_does_not_fit_is_named_before_the_model_loads(tmp_path, some_weights, tile, overlap, message):
    from d2nb.data.synthetic import LargeSpec, make_large_dataset

    large_json, image_dir = make_large_dataset(LargeSpec(num_images=2, size=512, shapes=40), tmp_path / "large")
    settings = _settings(tmp_path, weights=some_weights, dataset=large_json, image_root=image_dir, tile=tile,
                         tile_overlap=overlap)
    with pytest.raises(D2nbError, match=message) as error:  # some_weights is no checkpoint: never loaded
        evaluate(settings)
    assert "Fix:" in str(error.value) and "tile" in error.value.fix
    assert not (tmp_path / "out" / "log.txt").exists()


def test_command_line_rejects_an_odd_option_list(capsys):
    from d2nb.cli import main

    assert main(["evaluate", "--num-gpus", "0", "MODEL.WEIGHTS"]) == 2
    assert "KEY VALUE pairs" in capsys.readouterr().err
