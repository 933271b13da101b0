"""04_evaluate under papermill on the CPU, on the checkpoint of the 03_train run: the AP it
reports is the AP pycocotools computes from the same saved results."""

import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import run_notebook

TASKS = ("bbox", "segm")


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    output_dir = folder / "evaluation"
    notebook = run_notebook("04_evaluate.ipynb", folder / "04_evaluate.out.ipynb",
                            {"gpus": 0, "config": trained_run["output_dir"], "output_dir": output_dir,
                             "compare_with": trained_run["output_dir"], "save_thresholds": "best_f1", "tta": True,
                             "tile": 128})  # the val pictures' size: one tile each, plus the whole picture
    return {"output_dir": output_dir, "notebook": notebook, "run": trained_run["output_dir"]}


def _pycocotools(gt_json, results, task):
    gt = COCO(gt_json)
    if task == "segm":  # as detectron2 does: mask areas, not box areas, for small/medium/large
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    coco_eval = COCOeval(gt, gt.loadRes(results), task)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def test_reported_ap_equals_pycocotools_on_the_saved_results(evaluated):
    out = evaluated["output_dir"]
    metrics = json.loads((out / "metrics.json").read_text())
    results = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt = json.loads(open(metrics["gt_json"]).read())
    assert metrics["gt_json"].endswith("val.json") and len(gt["images"]) == 50, "the synthetic val split"
    # detectron2 maps its contiguous class ids 0..3 back to the dataset's ids 1..4
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]} == {1, 2, 3, 4}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for task in TASKS:
        coco_eval = _pycocotools(metrics["gt_json"], results, task)
        for index, key in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
            ours, theirs = metrics[task][key], coco_eval.stats[index] * 100
            assert ours == pytest.approx(theirs, abs=1e-6) or (theirs < 0 and ours != ours), (task, key)
        precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
        for k, category_id in enumerate(coco_eval.params.catIds):
            values = precision[:, :, k, 0, -1]
            expected = values[values > -1].mean() * 100
            assert metrics[task][f"AP-{names[category_id]}"] == pytest.approx(expected, abs=1e-6)


def test_the_notebook_shows_the_tables_and_the_analysis(evaluated):
    outputs = [o for c in evaluated["notebook"]["cells"] for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"]) for o in outputs)
    for task in TASKS:
        assert f"Evaluation results for {task}: \n|   AP   |  AP50  |  AP75  |" in text
        assert f"Per-category {task} AP: \n| category" in text
    assert "images have errors at score >= 0.5" in text
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    # per-category AP, precision-recall, confusion matrix, score histograms, gallery, AP over training
    assert len(figures) == 6
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), "the viewer"
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_the_evaluation_folder_is_complete_and_readable_again(evaluated):
    from d2nb.evaluate import load_evaluation

    out = evaluated["output_dir"]
    for name in ("inference/coco_instances_results.json", "inference/instances_predictions.pth",
                 "metrics.json", "ap_tables.json", "log.txt"):
        assert (out / name).is_file(), name
    result = load_evaluation(out)
    assert result.training_run == str(evaluated["run"])
    assert result.class_names == ["circle", "triangle", "square", "star"]


def test_the_threshold_explorer_runs_and_writes_best_f1_thresholds(evaluated):
    from d2nb.thresholds import ThresholdTable, read_thresholds

    out = evaluated["output_dir"]
    written = json.loads((out / "thresholds.json").read_text())
    assert written["score_threshold"] == 0.5 and written["task"] == "segm"
    table = ThresholdTable.from_evaluation(out, "segm")
    assert written["per_class"] == table.best_f1_thresholds()
    assert sorted(written["per_class"]) == ["circle", "square", "star", "triangle"]
    assert read_thresholds(out).for_class("star") == written["per_class"]["star"]
    text = "".join("".join(o.get("text", "")) for c in evaluated["notebook"]["cells"] for o in c.get("outputs", []))
    assert f"written: {out / 'thresholds.json'}" in text
    assert "best-F1 threshold per class: circle " in text


def test_tta_scores_the_same_keys_and_the_report_puts_them_beside_the_plain_ap(evaluated):
    out = evaluated["output_dir"]
    plain = json.loads((out / "metrics.json").read_text())
    augmented = json.loads((out / "metrics_tta.json").read_text())
    assert sorted(augmented) == list(TASKS)
    for task in TASKS:
        assert sorted(augmented[task]) == sorted(plain[task])
        assert 0 < augmented[task]["AP"] <= 100
    assert (out / "inference_tta" / "coco_instances_results.json").is_file()
    text = "".join("".join(o.get("text", "")) for c in evaluated["notebook"]["cells"] for o in c.get("outputs", []))
    assert "Test-time augmentation against the plain model:" in text
    assert f"| segm     | AP     | {plain['segm']['AP']:6.2f} | {augmented['segm']['AP']:6.2f} |" in text


def test_tile_scores_the_same_keys_and_the_report_puts_them_beside_the_plain_ap(evaluated):
    out = evaluated["output_dir"]
    plain = json.loads((out / "metrics.json").read_text())
    tiled = json.loads((out / "metrics_tiled.json").read_text())
    assert (plain["tile"], plain["tile_overlap"]) == (128, 0.25)
    assert sorted(tiled) == list(TASKS) and all(sorted(tiled[task]) == sorted(plain[task]) for task in TASKS)
    text = "".join("".join(o.get("text", "")) for c in evaluated["notebook"]["cells"] for o in c.get("outputs", []))
    assert "Tiled inference (128 px tiles, overlap 0.25) against the plain model:" in text
    assert f"| bbox     | AP     | {plain['bbox']['AP']:6.2f} | {tiled['bbox']['AP']:6.2f} |" in text
