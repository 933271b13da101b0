"""Drawing and saving predictions at a threshold, from cached arrays (no model runs here)."""

import json

import cv2
import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from d2nb.draw import class_colour, draw_predictions
from d2nb.predict import predictions_to_coco, prediction_from_arrays, save_outputs

NAMES = ["circle", "triangle", "square"]


def squares_prediction(height=120, width=160, name="scene.png"):
    """Three filled squares with known scores 0.9 (circle), 0.6 (triangle), 0.3 (circle)."""
    image = np.full((height, width, 3), 40, np.uint8)
    boxes = [(10, 10, 40, 40), (60, 20, 100, 60), (110, 70, 150, 110)]
    masks = np.zeros((3, height, width), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return prediction_from_arrays(image, boxes, [0.9, 0.6, 0.3], [0, 1, 0], NAMES, masks, name=name)


def test_threshold_and_class_filter_choose_what_is_kept_and_counted():
    prediction = squares_prediction()
    assert list(prediction.kept(0.5)) == [0, 1]
    assert prediction.counts(0.5) == {"circle": 1, "triangle": 1}
    assert prediction.counts(0.2) == {"circle": 2, "triangle": 1}
    assert prediction.counts(0.2, classes=["circle"]) == {"circle": 2}
    assert prediction.counts(0.95) == {}


def test_drawing_changes_exactly_the_kept_instances():
    prediction = squares_prediction()
    plain = prediction.image
    drawn = draw_predictions(prediction, 0.5, labels=False)
    assert not np.array_equal(drawn[25, 25], plain[25, 25])  # kept: mask blended in
    assert not np.array_equal(drawn[40, 80], plain[40, 80])
    assert np.array_equal(drawn[90, 130], plain[90, 130])  # score 0.3 < 0.5: untouched
    lower = draw_predictions(prediction, 0.25, labels=False)
    assert not np.array_equal(lower[90, 130], plain[90, 130])
    only_triangles = draw_predictions(prediction, 0.25, classes=["triangle"], labels=False)
    assert np.array_equal(only_triangles[25, 25], plain[25, 25])
    assert np.array_equal(prediction.image, plain)  # the cached picture is never drawn on


def test_boxes_masks_and_labels_toggle_their_own_layer():
    prediction = squares_prediction()
    inside, edge = (25, 25), (10, 25)  # centre of square 0, and a point on its box's top edge
    masks_only = draw_predictions(prediction, 0.5, boxes=False, labels=False)
    boxes_only = draw_predictions(prediction, 0.5, masks=False, labels=False)
    assert not np.array_equal(masks_only[inside], prediction.image[inside])
    assert np.array_equal(boxes_only[inside], prediction.image[inside])
    assert tuple(boxes_only[edge]) == class_colour(0)
    labelled = draw_predictions(prediction, 0.5, boxes=False, masks=False)
    nothing = draw_predictions(prediction, 0.5, boxes=False, masks=False, labels=False)
    assert np.array_equal(nothing, prediction.image) and not np.array_equal(labelled, prediction.image)


def test_coco_json_holds_files_categories_boxes_masks_and_scores(tmp_path):
    predictions = [squares_prediction(name="a.png"), squares_prediction(name="b.png")]
    coco = predictions_to_coco(predictions, 0.5)
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.png"]
    assert [c["name"] for c in coco["categories"]] == NAMES
    assert len(coco["annotations"]) == 4 and {a["score"] for a in coco["annotations"]} == {0.9, 0.6}
    first = coco["annotations"][0]
    assert first["bbox"] == [10.0, 10.0, 30.0, 30.0] and first["category_id"] == 1
    decoded = mask_util.decode({"size": first["segmentation"]["size"], "counts": first["segmentation"]["counts"].encode()})
    assert decoded.sum() == 900 and decoded[10:40, 10:40].all()
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(coco))
    loaded = COCO(str(path))  # a dataset pycocotools reads, and results it can evaluate
    assert len(loaded.getAnnIds()) == 4 and len(loaded.loadRes(coco["annotations"]).getAnnIds()) == 4


def test_coordinates_are_saved_in_the_original_picture_when_it_was_scaled_down():
    prediction = squares_prediction()
    prediction.scale = 0.5  # the file was twice as large as what the model saw
    annotation = predictions_to_coco([prediction], 0.5)["annotations"][0]
    assert annotation["bbox"] == [20.0, 20.0, 60.0, 60.0]
    assert annotation["segmentation"]["size"] == [240, 320]


def test_save_outputs_writes_a_picture_per_input_and_the_json(tmp_path):
    predictions = [squares_prediction(name="x.png"), squares_prediction(name="x.png"), squares_prediction(name="y.jpg")]
    saved = save_outputs(predictions, tmp_path / "out", score_threshold=0.5)
    assert sorted(p.rsplit("/", 1)[1] for p in saved["images"]) == ["x.png", "x_1.png", "y.jpg"]
    assert cv2.imread(saved["images"][0]).shape == (120, 160, 3)
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["annotations"]) == 6
    single = save_outputs(predictions[:1], tmp_path / "one.jpg", score_threshold=0.8)
    assert single["images"] == [str(tmp_path / "one.jpg")] and single["json"].endswith("one.predictions.json")
    assert len(json.loads(open(single["json"]).read())["annotations"]) == 1
