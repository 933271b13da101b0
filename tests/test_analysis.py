"""Error analysis on hand-made predictions whose true positives, false positives and
confusions are known, and AP over training read from a metrics.json written here."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from matplotlib.figure import Figure

from d2nb import analysis
from d2nb.errors import D2nbError

CLASSES = ["cat", "dog", "bird", "fish"]  # ids 1, 2, 5, 9: not contiguous; no fish anywhere
IDS = {"cat": 1, "dog": 2, "bird": 5, "fish": 9}


def _ground_truth():
    objects = {  # image id: [(class, box)]
        1: [("cat", [0, 0, 10, 10]), ("dog", [20, 20, 10, 10])],
        2: [("dog", [0, 0, 10, 10])],
        3: [("bird", [0, 0, 10, 10]), ("cat", [30, 30, 10, 10])],
        4: [("cat", [0, 0, 20, 20])],
        5: [("cat", [0, 0, 10, 10])],
    }
    annotations = [{"id": len(objects) * 10 + n, "image_id": image, "category_id": IDS[name], "bbox": box,
                    "area": box[2] * box[3], "iscrowd": 0, "segmentation": [_polygon(box)]}
                   for image, items in objects.items() for n, (name, box) in enumerate(items)]
    for n, a in enumerate(annotations):
        a["id"] = n + 1
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in objects],
            "annotations": annotations,
            "categories": [{"id": IDS[n], "name": n} for n in CLASSES]}


def _polygon(box):
    x, y, w, h = box
    return [x, y, x + w, y, x + w, y + h, x, y + h]


PREDICTIONS = [  # (image, class, box, score, what it is at IoU 0.5)
    (1, "cat", [0, 0, 10, 10], 0.9, "true positive"),
    (1, "bird", [20, 20, 10, 10], 0.8, "a dog taken for a bird"),
    (1, "cat", [50, 50, 10, 10], 0.7, "on background"),
    (2, "dog", [0, 0, 10, 10], 0.95, "true positive"),
    (2, "dog", [1, 1, 10, 10], 0.6, "duplicate: its dog is taken"),
    (4, "dog", [0, 0, 20, 20], 0.9, "wrong class; the right class below takes the cat"),
    (4, "cat", [0, 0, 20, 20], 0.5, "true positive despite its lower score"),
    (5, "cat", [0, 0, 10, 10], 0.3, "true positive, but below a 0.5 threshold"),
]


def _detections(with_masks=False):
    results = []
    for image, name, box, score, _ in PREDICTIONS:
        result = {"image_id": image, "category_id": IDS[name], "bbox": box, "score": score}
        if with_masks:
            mask = np.zeros((64, 64), np.uint8, order="F")
            mask[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = 1
            rle = mask_util.encode(mask)
            rle["counts"] = rle["counts"].decode()  # as detectron2 writes them to json
            result["segmentation"] = rle
        results.append(result)
    return results


@pytest.fixture
def matches_at_half():
    return analysis.match_detections(_ground_truth(), _detections(), score_threshold=0.5)


def test_confusion_matrix_counts_hits_confusions_background_and_misses(matches_at_half):
    confusion = analysis.confusion_matrix(matches_at_half, CLASSES, score_threshold=0.5)
    assert confusion.labels == CLASSES + ["background"]
    expected = np.array([
        # predicted: cat dog bird fish background     ground truth:
        [2, 0, 0, 0, 2],  # cat: found in images 1 and 4; missed in 3, and in 5 (score 0.3)
        [0, 1, 1, 0, 0],  # dog: found in image 2; taken for a bird in image 1
        [0, 0, 0, 0, 1],  # bird: missed in image 3
        [0, 0, 0, 0, 0],  # fish: none
        [1, 2, 0, 0, 0],  # background: a cat in image 1, the duplicate dog and the wrong dog
    ])
    np.testing.assert_array_equal(confusion.matrix, expected)
    assert isinstance(analysis.plot_confusion_matrix(confusion), Figure)


def test_a_lower_threshold_turns_the_low_scoring_cat_into_a_hit():
    matches = analysis.match_detections(_ground_truth(), _detections(), score_threshold=0.0)
    confusion = analysis.confusion_matrix(matches, CLASSES)
    assert confusion.matrix[0, 0] == 3 and confusion.matrix[0, 4] == 1


def test_worst_images_first_with_a_class_filter(matches_at_half):
    order = analysis.worst_images(matches_at_half)
    # image 1: a confused dog (missed) + the bird and the background cat; image 3: two missed
    assert [m.image_id for m in order] == [1, 3, 2, 4, 5]
    assert [m.errors() for m in order] == [3, 2, 1, 1, 1]
    assert [(m.missed(), m.false_positives()) for m in order][:2] == [(1, 2), (2, 0)]
    assert [m.image_id for m in analysis.worst_images(matches_at_half, CLASSES, "dog")] == [1, 2, 4]
    assert [m.image_id for m in analysis.worst_images(matches_at_half, CLASSES, "bird")] == [1, 3]
    assert analysis.worst_images(matches_at_half, CLASSES, "fish") == []
    assert len(analysis.worst_images(matches_at_half, CLASSES, "fish", include_perfect=True)) == 5
    with pytest.raises(D2nbError, match="'horse'"):
        analysis.worst_images(matches_at_half, CLASSES, "horse")


def test_scores_of_true_and_false_positives():
    matches = analysis.match_detections(_ground_truth(), _detections())
    true, false = analysis.scores_of_true_and_false_positives(matches)
    assert sorted(true) == [0.3, 0.5, 0.9, 0.95]
    assert sorted(false) == [0.6, 0.7, 0.8, 0.9]
    assert isinstance(analysis.plot_score_histograms(true, false), Figure)


def test_mask_overlaps_give_the_same_matching_as_boxes_for_rectangles():
    by_box = analysis.match_detections(_ground_truth(), _detections(True), score_threshold=0.5)
    by_mask = analysis.match_detections(_ground_truth(), _detections(True), score_threshold=0.5, task="segm")
    for box, mask in zip(by_box, by_mask):
        np.testing.assert_array_equal(box.pred_gt, mask.pred_gt)


def test_per_category_ap_from_cocoeval_arrays():
    coco_eval = analysis.run_cocoeval(_ground_truth(), _detections(), "bbox")
    assert coco_eval.eval["precision"].shape == (10, 101, 4, 4, 3)  # [T, R, K, A, M]
    ap = analysis.per_category_ap(coco_eval)
    assert list(ap) == CLASSES
    assert np.isnan(ap["fish"]), "a class without ground truth has no AP"
    assert ap["bird"] == 0.0, "its only bird was missed"
    # dog: found (top score) and confused; the duplicate is an extra false positive below it
    assert ap["dog"] == pytest.approx(50.0, abs=1.0)
    # the mean of the per-class APs that exist is COCOeval's own AP
    assert np.nanmean(list(ap.values())) == pytest.approx(coco_eval.stats[0] * 100)
    assert isinstance(analysis.plot_per_category_ap(ap), Figure)


def test_precision_recall_curves():
    coco_eval = analysis.run_cocoeval(_ground_truth(), _detections(), "bbox")
    by_iou = analysis.precision_recall_by_iou(coco_eval)
    assert by_iou.precision.shape == (10, 101) and by_iou.labels[0] == "IoU 0.50"
    by_class = analysis.precision_recall_by_class(coco_eval, 0.5)
    assert by_class.labels == CLASSES and by_class.precision.shape == (4, 101)
    assert np.isnan(by_class.precision[3]).all(), "fish: nothing to draw"
    assert by_class.precision[1][0] == pytest.approx(1.0), "dog: the top-scoring dog is right"
    fig = analysis.plot_precision_recall(coco_eval)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 10
    with pytest.raises(D2nbError, match="0.52"):
        analysis.precision_recall_by_class(coco_eval, 0.52)


def test_error_gallery_draws_ground_truth_beside_predictions(matches_at_half, tmp_path):
    import cv2

    for image in range(1, 6):
        cv2.imwrite(str(tmp_path / f"{image}.jpg"), np.full((64, 64, 3), 128, np.uint8))
    worst = analysis.worst_images(matches_at_half)
    fig = analysis.plot_error_gallery(worst, tmp_path, CLASSES, count=2)
    assert len(fig.axes) == 4
    assert "1.jpg" in fig.axes[0].get_title() and "1 missed" in fig.axes[0].get_title()
    assert len(fig.axes[1].patches) == 3, "three predictions above 0.5 in image 1"
    assert analysis.figure_png(fig).startswith(b"\x89PNG")
    with pytest.raises(D2nbError, match="nowhere"):
        analysis.plot_error_gallery(worst, tmp_path / "nowhere", CLASSES)


def test_ap_over_training_reads_the_evaluation_entries(tmp_path):
    runs = []
    for name, final in (("short", 40.0), ("long", 60.0)):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"iteration": 9, "total_loss": 2.0},
                {"iteration": 19, "bbox/AP": final / 2, "segm/AP": final / 3, "bbox/AP-cat": 1.0},
                {"iteration": 39, "bbox/AP": final, "segm/AP": final / 2}]
        (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        runs.append(folder)
    (runs[1] / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 40\n")
    rows = [json.loads(line) for line in (runs[1] / "metrics.json").read_text().splitlines()]
    rows[-1]["iteration"] = 40  # the final evaluation is logged at max_iter, the periodic ones a step before
    (runs[1] / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    series = analysis.ap_over_training(runs[1])
    np.testing.assert_array_equal(series["bbox/AP"], [[20, 30.0], [40, 60.0]])
    np.testing.assert_array_equal(analysis.ap_over_training(runs[0])["segm/AP"][:, 0], [20, 40])
    fig = analysis.plot_ap_over_training({"short": runs[0], "long": runs[1]})
    assert [ax.get_title() for ax in fig.axes] == ["short", "long"]
    assert len(fig.axes[0].lines) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(D2nbError, match="metrics.json"):
        analysis.ap_over_training(tmp_path / "empty")
