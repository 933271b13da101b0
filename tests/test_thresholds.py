"""The threshold explorer over an evaluation: counts at any score threshold from one matching.

Hand-made ground truth and predictions whose TP/FP/FN are worked out below by hand, and a
random case with many class confusions checked against ``analysis`` re-matching at each
threshold (the slow way the explorer avoids).
"""

import json

import numpy as np
import pytest

from d2nb import analysis
from d2nb.errors import D2nbError
from d2nb.thresholds import ThresholdTable, read_thresholds, write_thresholds
from d2nb.widgets.thresholds import BEST_F1, ThresholdMetricsExplorer

CLASSES = ["cat", "dog"]


def coco(images, annotations):
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in images],
            "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": box, "area": box[2] * box[3],
                             "iscrowd": 0} for n, (i, c, box) in enumerate(annotations)],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


# image 1: a cat A and a dog B; image 2: a cat C.
GT = coco([1, 2], [(1, 1, [0, 0, 10, 10]), (1, 2, [20, 20, 10, 10]), (2, 1, [0, 0, 10, 10])])
PREDICTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},    # cat on A: TP
    {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.7},  # cat on nothing: FP
    {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.6},  # dog on B: TP
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.8},    # dog on cat C: confusion
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.4},    # cat on C: TP when kept
]


@pytest.fixture(scope="module")
def table():
    return ThresholdTable.from_files(GT, PREDICTIONS, CLASSES)


def test_counts_precision_recall_and_f1_at_thresholds_match_the_hand_count(table):
    # score >= 0.5: cat TP 1 (A), FP 1 (the 0.7), FN 1 (C, which the dog took); dog TP 1 (B), FP 1 (on C)
    at = table.at(0.5)
    assert at.true_positives.tolist() == [1, 1]
    assert at.false_positives.tolist() == [1, 1]
    assert at.false_negatives.tolist() == [1, 0]
    assert at.precision == pytest.approx([0.5, 0.5])
    assert at.recall == pytest.approx([0.5, 1.0])
    assert at.f1 == pytest.approx([0.5, 2 / 3])
    assert at.overall == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "true_positives": 2,
                                        "false_positives": 2, "false_negatives": 1})
    # score >= 0.3: the cat 0.4 finds C, so the dog on C is a false positive on background
    at = table.at(0.3)
    assert (at.true_positives.tolist(), at.false_positives.tolist(), at.false_negatives.tolist()) == \
        ([2, 1], [1, 1], [0, 0])
    # score >= 0.85: only the cat on A
    at = table.at(0.85)
    assert (at.true_positives.tolist(), at.false_positives.tolist(), at.false_negatives.tolist()) == \
        ([1, 0], [0, 0], [1, 1])
    assert at.precision == pytest.approx([1.0, 0.0]) and at.recall == pytest.approx([0.5, 0.0])


def test_the_confusion_matrix_follows_the_threshold_as_worked_out_by_hand(table):
    # rows: ground truth cat, dog, background; columns: predicted cat, dog, background
    assert table.confusion(0.5).matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert table.confusion(0.3).matrix.tolist() == [[2, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert table.confusion(0.85).matrix.tolist() == [[1, 0, 1], [0, 0, 1], [0, 0, 0]]


def random_case(seed=0, images=60):
    rng = np.random.default_rng(seed)
    annotations, predictions = [], []
    for image in range(1, images + 1):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 80, 2)
            annotations.append((image, int(rng.integers(1, 3)), [float(x), float(y), 15.0, 15.0]))
            for _ in range(rng.integers(0, 3)):  # near-duplicates of either class on each object
                jitter = rng.normal(0, 1.5, 2)
                predictions.append({"image_id": image, "category_id": int(rng.integers(1, 3)),
                                    "bbox": [float(x + jitter[0]), float(y + jitter[1]), 15.0, 15.0],
                                    "score": float(np.round(rng.uniform(0, 1), 2))})  # ties on purpose
        for _ in range(rng.integers(0, 2)):
            predictions.append({"image_id": image, "category_id": int(rng.integers(1, 3)),
                                "bbox": [float(v) for v in rng.uniform(0, 80, 2)] + [12.0, 12.0],
                                "score": float(rng.uniform(0, 1))})
    return coco(range(1, images + 1), annotations), predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_confusion_matrix_at_t_equals_the_one_analysis_computes_with_t(seed):
    gt, predictions = random_case(seed)
    table = ThresholdTable.from_files(gt, predictions, CLASSES)
    compared = 0
    for t in [0.0, 0.1, 0.25, 0.3, 0.5, 0.55, 0.7, 0.9, 1.0]:
        matches = analysis.match_detections(gt, predictions, score_threshold=t)
        expected = analysis.confusion_matrix(matches, CLASSES, t).matrix
        assert table.confusion(t).matrix.tolist() == expected.tolist(), t
        at = table.at(t)
        k = len(CLASSES)
        assert at.true_positives.tolist() == np.diag(expected)[:k].tolist()
        assert at.false_negatives.tolist() == (expected[:k].sum(1) - np.diag(expected)[:k]).tolist()
        compared += int(expected[:k, :k].sum() - np.trace(expected[:k, :k]))
    assert compared > 0  # the case does hold class confusions


def test_best_f1_thresholds_per_class(table):
    # cat: thresholds 0.9 (P 1, R .5, F1 .667), 0.7 (P .5, R .5), 0.4 (P 2/3, R 1, F1 .8) -> 0.4
    # dog: 0.8 (P 0, R 0), 0.6 (P .5, R 1, F1 .667) -> 0.6
    assert table.best_f1_thresholds() == {"cat": 0.4, "dog": 0.6}
    assert table.best_f1_threshold() == 0.4  # overall F1 at 0.4: TP 3, FP 2, FN 0 -> 0.75


def test_the_slider_redraws_metrics_and_the_confusion_matrix_headlessly(table, tmp_path):
    explorer = ThresholdMetricsExplorer(table, score_threshold=0.85, output_dir=tmp_path)
    explorer.score_threshold.value = 0.5
    assert explorer.metrics.overall["precision"] == pytest.approx(0.5)
    assert explorer.confusion.matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert "0.667" in explorer.metrics_view.value  # dog's F1 in the table
    assert explorer.curves_view.value.count("<circle") == 2
    explorer.class_filter.value = "dog"
    assert explorer.curves_view.value.count("<circle") == 1
    assert "cat" not in explorer.metrics_view.value.split("</tr>", 1)[1]  # only the dog row after the header

    assert "F1 0.571" in explorer.summary() and "cat 0.40, dog 0.60" in explorer.summary()
    explorer.choice.value = BEST_F1
    explorer.save.click()
    written = json.loads((tmp_path / "thresholds.json").read_text())
    assert written["score_threshold"] == 0.5 and written["per_class"] == {"cat": 0.4, "dog": 0.6}
    read = read_thresholds(tmp_path)
    assert read.for_class("cat") == 0.4 and read.for_class("bird") == 0.5


def test_bad_thresholds_and_files_are_clear_errors(table, tmp_path):
    with pytest.raises(D2nbError, match=r"score_threshold=1.5 is not a number in \[0, 1\]"):
        table.at(1.5)
    with pytest.raises(D2nbError, match="save_thresholds='best-f1' is not one of") as error:
        ThresholdMetricsExplorer(table, output_dir=tmp_path).write("best-f1")
    assert error.value.fix == "pass 'best_f1'"
    with pytest.raises(D2nbError, match="name no class"):
        write_thresholds(tmp_path, table, 0.5, {"bird": 0.3})
    (tmp_path / "thresholds.json").write_text("{not json")
    with pytest.raises(D2nbError, match="not a thresholds file") as error:
        read_thresholds(tmp_path)
    assert "write it again" in error.value.fix
    assert read_thresholds(tmp_path / "nothing-here") is None
