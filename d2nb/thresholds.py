"""Score thresholds over a finished evaluation: precision, recall, F1, TP/FP/FN and the
confusion matrix at any threshold, from one matching, without the model or COCOeval.

    table = ThresholdTable.from_evaluation(result)        # matches once (the slow part)
    at = table.at(0.6)                                    # ThresholdMetrics: per class and overall
    at.precision, at.recall, at.f1                        # arrays, one value per class
    table.confusion(0.6)                                  # == analysis.confusion_matrix(match_detections(.., 0.6))
    table.best_f1_thresholds()                            # {"circle": 0.55, ...}
    write_thresholds(output_dir, table, 0.6)              # thresholds.json, read by 01_inference and d2nb demo

Why one matching serves every threshold: ``analysis.match_detections`` matches greedily by
score, so the predictions kept at a threshold ``t`` are a prefix of the score order, and the
first pass (a prediction takes a ground truth of its own class) gives every kept prediction
the same match it has at ``t = 0``. Whether a prediction is a true positive is therefore fixed
once, and precision and recall at ``t`` are cumulative counts looked up with ``searchsorted``.
Only the second pass (a class confusion: an unmatched prediction takes an unmatched object of
another class) depends on ``t`` in another way; it is replayed exactly, at each ``t``, on the
few images where such a pair overlaps at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2nb import analysis
from d2nb.errors import D2nbError

THRESHOLDS_FILE = "thresholds.json"
CHOICES = ("score_threshold", "best_f1")  # what thresholds.json gets: the one threshold, or best F1 per class


@dataclass
class ThresholdMetrics:
    """Counts and rates at one score threshold; arrays hold one value per class (the order of
    ``class_names``), the ``overall_*`` values sum the counts over classes (micro average)."""

    score_threshold: float
    class_names: list
    true_positives: np.ndarray
    false_positives: np.ndarray
    false_negatives: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def f1(self) -> np.ndarray:
        return _f1(self.precision, self.recall)

    @property
    def overall(self) -> dict:
        tp, fp, fn = (int(a.sum()) for a in (self.true_positives, self.false_positives, self.false_negatives))
        precision, recall = float(_ratio(tp, tp + fp)), float(_ratio(tp, tp + fn))
        return {"precision": precision, "recall": recall, "f1": float(_f1(precision, recall)),
                "true_positives": tp, "false_positives": fp, "false_negatives": fn}

    def rows(self) -> list:
        """One dict per class, then ``"all"``: what the explorer's table shows."""
        rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
                 "true_positives": int(tp), "false_positives": int(fp), "false_negatives": int(fn)}
                for name, p, r, f, tp, fp, fn in zip(self.class_names, self.precision, self.recall, self.f1,
                                                     self.true_positives, self.false_positives,
                                                     self.false_negatives)]
        return rows + [{"class": "all", **self.overall}]


def _ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _f1(precision, recall):
    precision, recall = np.asarray(precision, float), np.asarray(recall, float)
    return _ratio(2 * precision * recall, precision + recall)


@dataclass
class _Confusable:
    """One image's predictions that are not true positives but overlap an object of another
    class, with those objects: the second matching pass, replayed at each threshold."""

    pred_scores: np.ndarray  # in the image's score order
    pred_classes: np.ndarray
    gt_classes: np.ndarray
    gt_taken_at: np.ndarray  # score of the true positive that takes this object (-inf: none)
    allowed: np.ndarray  # [pred, gt] overlap >= the IoU threshold
    iou: np.ndarray


class ThresholdTable:
    """Every prediction of an evaluation with its score, class and whether it is a true
    positive, sorted by class and score; built once, then read at any threshold."""

    def __init__(self, matches: list, class_names: list, iou_threshold: float = analysis.IOU_THRESHOLD,
                 task: str = "bbox"):
        self.class_names = list(class_names)
        self.iou_threshold = iou_threshold
        self.task = task
        k = len(self.class_names)
        scores = np.concatenate([m.pred_scores for m in matches]) if matches else np.zeros(0)
        classes = np.concatenate([m.pred_classes for m in matches]).astype(int) if matches else np.zeros(0, int)
        hits = np.concatenate([m.true_positives for m in matches]) if matches else np.zeros(0, bool)
        gt_classes = np.concatenate([m.gt_classes for m in matches]).astype(int) if matches else np.zeros(0, int)
        self.gt_counts = np.bincount(gt_classes, minlength=k)[:k]
        self._scores, self._hits = [], []  # per class: scores high to low, cumulative true positives
        for c in range(k):
            order = np.argsort(-scores[classes == c], kind="stable")
            self._scores.append(scores[classes == c][order])
            self._hits.append(np.concatenate([[0], np.cumsum(hits[classes == c][order])]))
        self._confusable = [c for c in (self._confusable_part(m) for m in matches) if c is not None]
        self.images = len(matches)
        self.predictions = len(scores)

    @classmethod
    def from_evaluation(cls, result, task: str | None = None) -> "ThresholdTable":
        """The table of an ``EvaluationResult`` (or its output_dir): boxes for box models,
        mask overlap for ``task="segm"``."""
        from d2nb.evaluate import EvaluationResult, load_evaluation

        result = result if isinstance(result, EvaluationResult) else load_evaluation(result)
        task = task or "bbox"
        return cls.from_files(result.gt_json, result.results_json, result.class_names, task)

    @classmethod
    def from_files(cls, gt, detections, class_names=None, task: str = "bbox",
                   iou_threshold: float = analysis.IOU_THRESHOLD) -> "ThresholdTable":
        coco = analysis.load_ground_truth(gt)
        detections = analysis.load_detections(detections)
        names = class_names or [c["name"] for c in sorted(coco.dataset["categories"], key=lambda c: c["id"])]
        matches = analysis.match_detections(coco, detections, iou_threshold, 0.0, task)
        return cls(matches, names, iou_threshold, task)

    def _confusable_part(self, m: analysis.ImageMatches):
        if not len(m.pred_classes) or not len(m.gt_classes):
            return None
        tp = m.true_positives
        iou = m.iou if m.iou is not None else _box_iou(_xyxy(m.pred_boxes), _xyxy(m.gt_boxes))
        other_class = m.pred_classes[:, None] != m.gt_classes[None, :]
        allowed = (iou >= self.iou_threshold) & other_class & ~tp[:, None]
        preds, gts = np.flatnonzero(allowed.any(1)), np.flatnonzero(allowed.any(0))
        if not len(preds):
            return None
        taken_at = np.full(len(m.gt_classes), -np.inf)
        taken_at[m.pred_gt[tp]] = m.pred_scores[tp]
        return _Confusable(m.pred_scores[preds], m.pred_classes[preds], m.gt_classes[gts], taken_at[gts],
                           allowed[np.ix_(preds, gts)], iou[np.ix_(preds, gts)])

    # ------------------------------------------------------------------ reading at a threshold

    def _kept(self, c: int, score_threshold: float) -> int:
        """How many predictions of class ``c`` score at least the threshold."""
        return int(np.searchsorted(-self._scores[c], -score_threshold, side="right"))

    def at(self, score_threshold: float) -> ThresholdMetrics:
        """Precision, recall, F1 and TP/FP/FN per class with predictions ``>= score_threshold``."""
        t = _check_threshold(score_threshold)
        kept = np.array([self._kept(c, t) for c in range(len(self.class_names))], int)
        tp = np.array([self._hits[c][n] for c, n in enumerate(kept)], int)
        return ThresholdMetrics(t, self.class_names, tp, kept - tp, self.gt_counts - tp)

    def confusion(self, score_threshold: float) -> analysis.ConfusionMatrix:
        """The confusion matrix at the threshold, equal to ``analysis.confusion_matrix`` of
        ``analysis.match_detections(..., score_threshold=t)`` on the same files."""
        t = _check_threshold(score_threshold)
        metrics = self.at(t)
        k = len(self.class_names)
        matrix = np.zeros((k + 1, k + 1), int)
        for part in self._confusable:
            for g, d in _second_pass(part, t):
                matrix[part.gt_classes[g], part.pred_classes[d]] += 1
        confused_predictions, confused_objects = matrix[:k, :k].sum(0), matrix[:k, :k].sum(1)
        matrix[np.arange(k), np.arange(k)] = metrics.true_positives
        matrix[k, :k] = metrics.false_positives - confused_predictions  # predictions on nothing
        matrix[:k, k] = metrics.false_negatives - confused_objects  # objects nothing found
        return analysis.ConfusionMatrix(matrix, self.class_names + [analysis.BACKGROUND], self.iou_threshold, t)

    def curve(self, c: int) -> tuple:
        """``(recall, precision, scores)`` of class ``c`` as the threshold falls through its
        predictions' scores: the precision-recall curve the explorer's point moves on."""
        counts = np.arange(1, len(self._scores[c]) + 1)
        hits = self._hits[c][1:]
        return _ratio(hits, max(self.gt_counts[c], 0)), _ratio(hits, counts), self._scores[c]

    def best_f1_thresholds(self) -> dict:
        """Per class, the score threshold with the highest F1 (the lowest such score on ties
        of F1 keeps the higher recall); a class with no prediction keeps 0.5."""
        best = {}
        for c, name in enumerate(self.class_names):
            recall, precision, scores = self.curve(c)
            if not len(scores):
                best[name] = analysis.IOU_THRESHOLD
                continue
            f1 = _f1(precision, recall)
            # a threshold sits on a score; all predictions of that score are kept together
            last_of_score = np.r_[scores[1:] != scores[:-1], True]
            candidates = np.flatnonzero(last_of_score)
            best[name] = float(scores[candidates[np.argmax(f1[candidates])]])
        return best

    def best_f1_threshold(self) -> float:
        """The one threshold for all classes with the highest overall F1."""
        every = np.unique(np.concatenate(self._scores + [np.zeros(0)]))
        if not len(every):
            return analysis.IOU_THRESHOLD
        f1 = [self.at(float(t)).overall["f1"] for t in every]
        return float(every[int(np.argmax(f1))])


def _second_pass(part: _Confusable, t: float) -> list:
    """``[(object, prediction)]`` class confusions among the image's kept predictions, as
    ``analysis._greedy_match``'s second pass pairs them."""
    free = part.gt_taken_at < t  # objects no kept true positive took
    pairs = []
    for d in np.flatnonzero(part.pred_scores >= t):
        allowed = free & part.allowed[d]
        if allowed.any():
            g = int(np.argmax(np.where(allowed, part.iou[d], -1.0)))
            free[g] = False
            pairs.append((g, int(d)))
    return pairs


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], 1), np.prod(b[:, 2:] - b[:, :2], 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_threshold(score_threshold) -> float:
    try:
        t = float(score_threshold)
    except (TypeError, ValueError):
        t = math.nan
    if not 0.0 <= t <= 1.0:
        raise D2nbError(f"score_threshold={score_threshold!r} is not a number in [0, 1]",
                        "pass a score between 0 and 1, e.g. 0.5")
    return t


# --------------------------------------------------------------------------- thresholds.json


def write_thresholds(output_dir, table: ThresholdTable, score_threshold: float, per_class: dict | None = None) -> Path:
    """Write ``output_dir/thresholds.json``: one threshold for every class, and optionally one
    per class (``table.best_f1_thresholds()``), with the metrics each gives on this evaluation."""
    t = _check_threshold(score_threshold)
    per_class = {name: _check_threshold(value) for name, value in (per_class or {}).items()}
    unknown = sorted(set(per_class) - set(table.class_names))
    if unknown:
        raise D2nbError(f"thresholds for {unknown} name no class of this evaluation",
                        f"use the class names {table.class_names}")
    content = {
        "score_threshold": t,
        "per_class": per_class,
        "class_names": table.class_names,
        "task": table.task,
        "iou_threshold": table.iou_threshold,
        "at_score_threshold": table.at(t).overall,
    }
    path = Path(output_dir, THRESHOLDS_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    temporary.replace(path)
    return path


def choose_thresholds(table: ThresholdTable | None, choice: str, score_threshold: float = 0.5) -> tuple:
    """``(score_threshold, per_class)`` for ``choice``: ``"score_threshold"`` keeps the one
    threshold for every class, ``"best_f1"`` adds each class's best-F1 threshold."""
    if choice not in CHOICES:
        import difflib

        close = difflib.get_close_matches(str(choice), CHOICES, n=1)
        raise D2nbError(f"save_thresholds={choice!r} is not one of {list(CHOICES)}",
                        f"pass {close[0]!r}" if close else f"pass one of {list(CHOICES)}, or None to write nothing")
    score_threshold = _check_threshold(score_threshold)
    if table is None:  # only checking the choice
        return score_threshold, {}
    return score_threshold, (table.best_f1_thresholds() if choice == "best_f1" else {})


def save_thresholds(result, choice: str, score_threshold: float = 0.5, task: str | None = None) -> Path:
    """Match an evaluation (an ``EvaluationResult`` or its output_dir) once and write its
    ``thresholds.json`` as ``choose_thresholds`` picks them: what ``d2nb evaluate
    --save-thresholds`` and 04's ``save_thresholds`` do without the explorer's button."""
    from d2nb.evaluate import EvaluationResult, load_evaluation

    result = result if isinstance(result, EvaluationResult) else load_evaluation(result)
    table = ThresholdTable.from_evaluation(result, task or ("segm" if "segm" in result.metrics else "bbox"))
    return write_thresholds(result.output_dir, table, *choose_thresholds(table, choice, score_threshold))


@dataclass
class Thresholds:
    """What ``thresholds.json`` holds: ``score_threshold`` for every class, ``per_class``
    overriding it by class name."""

    score_threshold: float
    per_class: dict
    path: str

    def for_class(self, name) -> float:
        return self.per_class.get(name, self.score_threshold)

    def lowest(self) -> float:
        return min([self.score_threshold, *self.per_class.values()])

    def with_score_threshold(self, score_threshold: float) -> "Thresholds":
        """The same per-class thresholds, ``score_threshold`` for the other classes."""
        return Thresholds(float(score_threshold), dict(self.per_class), self.path)

    def __str__(self) -> str:
        own = ", ".join(f"{name} {t:.2f}" for name, t in self.per_class.items())
        return f"{self.score_threshold:.2f}" + (f" ({own}; from {self.path})" if own else f" (from {self.path})")


def default_thresholds(confidence_threshold=None, thresholds=None):
    """What 01_inference and ``d2nb demo`` apply: ``confidence_threshold`` when given, else the
    ``thresholds.json`` of ``thresholds`` (an evaluation's output_dir or the file), else 0.5.
    With both, the file's per-class thresholds stay and ``confidence_threshold`` is the others'.
    ``D2nbError`` when ``thresholds`` names a folder without the file."""
    from d2nb.prediction import DEFAULT_SCORE_THRESHOLD

    if thresholds in (None, ""):
        return DEFAULT_SCORE_THRESHOLD if confidence_threshold is None else _check_threshold(confidence_threshold)
    read = read_thresholds(thresholds)
    if read is None:
        raise D2nbError(f"thresholds={str(thresholds)!r} holds no {THRESHOLDS_FILE}",
                        "pass the output_dir of an evaluation whose threshold explorer wrote it "
                        "(04_evaluate with save_thresholds='best_f1', or its button), or thresholds=None")
    return read if confidence_threshold is None else read.with_score_threshold(_check_threshold(confidence_threshold))


def read_thresholds(folder_or_file) -> Thresholds | None:
    """The thresholds an evaluation wrote, from its output_dir or the json itself; ``None``
    when the folder has none. A file that is not valid is a ``D2nbError``."""
    if folder_or_file in (None, ""):
        return None
    path = Path(str(folder_or_file))
    path = path / THRESHOLDS_FILE if path.is_dir() else path
    if path.name != THRESHOLDS_FILE and path.suffix != ".json" or not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        score = _check_threshold(content["score_threshold"])
        per_class = {str(k): _check_threshold(v) for k, v in (content.get("per_class") or {}).items()}
    except (OSError, ValueError, KeyError, TypeError, D2nbError) as error:
        raise D2nbError(f"{path} is not a thresholds file d2nb can read ({error})",
                        "write it again from 04_evaluate's threshold explorer, or delete it") from None
    return Thresholds(score, per_class, str(path))
