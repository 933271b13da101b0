"""Tiled inference's geometry and merging on hand-made detections whose answer is known
(windows cover the picture; a shape cut by a tile border is found once, not twice), and, with
the checkpoint the suite trains, the small shapes of large pictures that tiling finds and
whole-picture inference loses, in the predictor and in evaluation's AP (API and ``d2nb
evaluate --tile``); test-time augmentation in the predictor."""

import json
from pathlib import Path

import numpy as np
import pytest

from d2nb.errors import D2nbError
from d2nb.images import LoadedImage
from d2nb.predict import Labels, Prediction
from d2nb.predict.tiling import group_detections, merge_parts, tile_windows, union_of_crops

LABELS = Labels(["circle", "square"], [1, 2])


def part(boxes, scores, classes, size=(100, 100), masks=True):
    """A tile's prediction: ``masks`` fill each box (in tile pixels)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = [(int(x0), int(y0), np.ones((int(y1 - y0), int(x1 - x0)), bool)) for x0, y0, x1, y1 in boxes]
    return Prediction("tile", np.zeros((*size, 3), np.uint8), boxes, np.asarray(scores, np.float32),
                      np.asarray(classes, np.int64), LABELS, crops if masks else None)


def test_windows_cover_the_picture_with_the_overlap_and_end_flush_with_its_edges():
    windows = tile_windows(300, 500, 200, 0.25)
    assert sorted({w[0] for w in windows}) == [0, 150, 300] and sorted({w[1] for w in windows}) == [0, 100]
    assert all(x1 - x0 == 200 and y1 - y0 == 200 for x0, y0, x1, y1 in windows)
    covered = np.zeros((300, 500), int)
    for x0, y0, x1, y1 in windows:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() == 1
    assert tile_windows(300, 500, 300, 0.0)[-1] == (200, 0, 500, 300)  # as tall as the picture: one row


def test_a_shape_cut_by_a_tile_border_is_found_once_with_its_whole_box_and_mask():
    picture = LoadedImage("board.png", "array", np.zeros((100, 200, 3), np.uint8))
    # tiles of 100 px at x = 0, 50, 100 (overlap 0.5); a circle at x 40-80 lies whole in the first tile
    # and is cut by the second tile's left border; a square at x 140-190 is whole in the third only,
    # cut in the second; a square beside the circle overlaps it but is another class.
    parts = [
        (part([[40, 10, 80, 50], [85, 20, 100, 40]], [0.9, 0.4], [0, 1]), 0, 0),
        (part([[0, 10, 30, 50], [90, 60, 100, 90], [35, 20, 50, 40]], [0.8, 0.7, 0.6], [0, 1, 1]), 50, 0),
        (part([[40, 60, 90, 90]], [0.95], [1]), 100, 0),
    ]
    merged = merge_parts(picture, parts, merge="greedy")
    order = np.argsort(-merged.scores)
    assert merged.boxes[order].tolist() == [[140, 60, 190, 90], [40, 10, 80, 50], [85, 20, 100, 40]]
    assert merged.classes[order].tolist() == [1, 0, 1]
    assert merged.scores[order] == pytest.approx([0.95, 0.9, 0.6])  # the best score of each group
    assert merged.image is picture.image and merged.name == "board.png"
    square = merged.full_mask(int(order[0]))
    assert square.sum() == 50 * 30 and square[60:90, 140:190].all()

    nms = merge_parts(picture, parts)  # the default: the best detection of each group, the others dropped
    assert len(nms) == 3 and sorted(nms.scores.tolist()) == pytest.approx([0.6, 0.9, 0.95])


def test_iou_matching_keeps_a_sliver_that_ios_would_merge():
    boxes = np.array([[0, 0, 40, 40], [30, 0, 40, 40]], np.float32)  # the second is a quarter of the first
    scores, classes = np.array([0.9, 0.8]), np.array([0, 0])
    assert group_detections(boxes, scores, classes, 0.5, "ios") == [[0, 1]]
    assert group_detections(boxes, scores, classes, 0.5, "iou") == [[0], [1]]


def test_union_of_crops():
    x, y, crop = union_of_crops([(2, 3, np.ones((2, 2), bool)), (5, 3, np.ones((1, 1), bool))])
    assert (x, y, crop.shape, int(crop.sum())) == (2, 3, (2, 4), 5)


@pytest.mark.parametrize("tile, overlap, message", [
    (1024, 0.25, r"tile=1024 is larger than the picture \(500 x 300 px\)"),
    (200, 1.0, r"tile_overlap=1.0 is outside \[0, 1\)"),
    (200, -0.1, r"tile_overlap=-0.1 is outside \[0, 1\)"),
    ("big", 0.25, r"tile='big' is not a tile size in pixels"),
])
def test_bad_tiles_are_named_with_the_fix(tile, overlap, message):
    with pytest.raises(D2nbError, match=message) as error:
        tile_windows(300, 500, tile, overlap)
    assert "tile" in error.value.fix


def recall_at(predictions, gt, threshold=0.5) -> float:
    from d2nb import analysis

    results = []
    for prediction, image in zip(predictions, sorted(gt["images"], key=lambda i: i["file_name"])):
        for k in prediction.kept(threshold):
            x0, y0, x1, y1 = (float(v) for v in prediction.boxes[k])
            results.append({"image_id": image["id"], "category_id": int(prediction.classes[k]) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(prediction.scores[k])})
    matches = analysis.match_detections(gt, results, score_threshold=threshold)
    return sum(int(m.found.sum()) for m in matches) / sum(len(m.gt_classes) for m in matches)


@pytest.fixture(scope="module")
def predictor(trained_run):
    from d2nb.predict import Predictor

    return Predictor(str(trained_run["output_dir"]), device="cpu")


def test_tiles_find_the_small_shapes_of_a_large_picture_that_the_whole_picture_loses(predictor, tmp_path):
    from d2nb.data.synthetic import LargeSpec, make_large_dataset
    from d2nb.images import load_images

    json_file, image_dir = make_large_dataset(LargeSpec(num_images=1, size=512, shapes=40), tmp_path)
    gt = json.loads(open(json_file).read())
    assert len(gt["annotations"]) >= 30
    pictures = load_images(image_dir)
    whole = recall_at(predictor.predict(pictures, progress=False), gt)
    tiled_predictions = predictor.predict(pictures, progress=False, tile=128, tile_overlap=0.35, batch_size=8)
    tiled = recall_at(tiled_predictions, gt)
    assert tiled >= whole + 0.2, (whole, tiled)  # measured: 0.0 -> about 0.5 (the shapes are 10-40 px)
    assert tiled_predictions[0].image.shape == (512, 512, 3) and tiled_predictions[0].masks is not None


def test_test_time_augmentation_in_the_predictor_gives_the_same_kind_of_predictions(trained_run):
    from d2nb.images import load_images
    from d2nb.predict import Predictor

    tta = Predictor(str(trained_run["output_dir"]), device="cpu", tta=True)
    assert "sizes [64, 80, 96, 112, 128, 144, 160, 176, 192] (max 640), and flipped" in tta.describe()
    pictures = load_images("samples")[:2]
    predictions = tta.predict(pictures, progress=False)
    assert len(predictions) == 2
    for prediction, picture in zip(predictions, pictures):
        assert prediction.image is picture.image and prediction.masks is not None
        assert len(prediction.masks) == len(prediction.scores) == len(prediction.boxes)


@pytest.fixture(scope="module")
def large_split(tmp_path_factory):
    """Two 512 px pictures of 40 shapes each (10-40 px): at the model's 128 px they are 2-10 px."""
    from d2nb.data.synthetic import LargeSpec, make_large_dataset

    return make_large_dataset(LargeSpec(num_images=2, size=512, shapes=40), tmp_path_factory.mktemp("large"))


@pytest.fixture(scope="module")
def tiled_evaluation(trained_run, large_split, tmp_path_factory):
    from d2nb.evaluate import EvaluationSettings, evaluate

    json_file, image_dir = large_split
    output_dir = tmp_path_factory.mktemp("tiled") / "evaluation"
    return evaluate(EvaluationSettings(config=str(trained_run["output_dir"]), dataset=json_file, image_root=image_dir,
                                       gpus=0, output_dir=str(output_dir), tile=128, tile_overlap=0.35, progress=False))


def test_evaluation_with_tiles_scores_the_small_shapes_that_the_whole_picture_loses(tiled_evaluation):
    from d2nb.evaluate import format_report, load_evaluation

    plain, tiled = tiled_evaluation.metrics, tiled_evaluation.tiled_metrics
    assert sorted(tiled) == sorted(plain) == ["bbox", "segm"]
    for task in plain:
        assert sorted(tiled[task]) == sorted(plain[task]), task
    print(f"plain {plain['bbox']}\ntiled {tiled['bbox']}")
    # measured: bbox AP 0.0 -> 15.6, APs 0.0 -> 26.2, segm AP 0.0 -> 21.0
    assert tiled["bbox"]["AP"] >= plain["bbox"]["AP"] + 5, (plain["bbox"], tiled["bbox"])
    assert tiled["bbox"]["APs"] >= plain["bbox"]["APs"] + 10, (plain["bbox"], tiled["bbox"])
    assert tiled["segm"]["AP"] > plain["segm"]["AP"], (plain["segm"], tiled["segm"])
    out = Path(tiled_evaluation.output_dir)
    saved = json.loads((out / "metrics_tiled.json").read_text())
    assert all(saved[task] == pytest.approx(tiled[task], nan_ok=True) for task in tiled)
    assert "Evaluation results for bbox" in json.loads((out / "ap_tables_tiled.json").read_text())["bbox"]
    results = json.loads((out / "inference_tiled" / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2} and all("segmentation" in r for r in results)
    report = format_report(tiled_evaluation)
    assert "Tiled inference (128 px tiles, overlap 0.35) against the plain model:" in report
    assert f"| bbox     | AP     | {plain['bbox']['AP']:6.2f} | {tiled['bbox']['AP']:6.2f} |" in report
    assert format_report(load_evaluation(out)) == report


def test_d2nb_evaluate_takes_tile_and_prints_the_tiled_ap(trained_run, large_split, tmp_path):
    import os
    import subprocess
    import sys

    json_file, image_dir = large_split
    completed = subprocess.run(
        [sys.executable, "-m", "d2nb", "evaluate", "--config-file", str(trained_run["output_dir"]),
         "--dataset", json_file, "--image-root", image_dir, "--output", str(tmp_path / "cli"), "--num-gpus", "0",
         "--tile", "128"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Tiled inference (128 px tiles, overlap 0.25) against the plain model:" in completed.stdout
    assert "| segm     | AP     |" in completed.stdout
    assert (tmp_path / "cli" / "metrics_tiled.json").is_file()
