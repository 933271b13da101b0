"""What a model found in one picture: the ``Prediction`` that ``d2nb.predict`` makes and
``d2nb.draw``, the explorer and the saved outputs read.

It lives here, below both, so that drawing needs numpy and OpenCV only: importing
``d2nb.draw`` does not import the predictor (nor torch).

    prediction.kept(score_threshold=0.7, classes={"person"})   # indices, best first
    prediction.counts(0.7)                                     # {"person": 3, "dog": 1}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.5  # demo.py's --confidence-threshold default


@dataclass
class Labels:
    """What a model's outputs mean: class names and the dataset ids they are saved under."""

    class_names: list
    category_ids: list  # COCO category id of each contiguous class index
    stuff_names: list | None = None
    keypoint_names: list | None = None
    keypoint_connections: list | None = None  # [(name, name, rgb)]


@dataclass
class Prediction:
    """What the model found in one picture, with scores down to the predictor's floor.

    ``boxes`` are XYXY pixels of ``image``; ``masks`` one ``(x0, y0, bool crop)`` per instance
    (crops keep memory and redraw time proportional to the objects, not the picture), or
    ``None`` for box-only models; ``keypoints`` ``(N, K, 3)`` x, y, score; ``segments`` a
    label map of ``labels.stuff_names`` (-1 for none) from panoptic and semantic models.
    """

    name: str
    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    labels: Labels
    masks: list | None = None
    keypoints: np.ndarray | None = None
    segments: np.ndarray | None = None
    source: str = ""
    scale: float = 1.0

    def __len__(self) -> int:
        return len(self.scores)

    def kept(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, classes=None) -> np.ndarray:
        """Indices of instances scoring at least ``score_threshold`` whose class name is in
        ``classes`` (``None``: every class), highest score first. ``score_threshold`` may also
        be per class: a ``d2nb.thresholds.Thresholds`` (what 04's thresholds.json holds)."""
        keep = self.scores >= instance_thresholds(score_threshold, self.labels.class_names, self.classes)
        if classes is not None:
            wanted = {c for c in classes}
            keep &= np.array([self.labels.class_names[c] in wanted for c in self.classes], dtype=bool)
        order = np.argsort(-self.scores, kind="stable")
        return order[keep[order]]

    def counts(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, classes=None) -> dict:
        """``{class name: number of kept instances}``, most frequent first."""
        names = [self.labels.class_names[self.classes[i]] for i in self.kept(score_threshold, classes)]
        return dict(sorted(((n, names.count(n)) for n in set(names)), key=lambda kv: (-kv[1], kv[0])))

    def full_mask(self, index: int) -> np.ndarray:
        """Instance ``index``'s mask at the size of ``image``."""
        mask = np.zeros(self.image.shape[:2], dtype=bool)
        x0, y0, crop = self.masks[index]
        mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return mask


def instance_thresholds(score_threshold, class_names, classes):
    """The threshold each instance must reach: one number for all, or, for an object with
    ``score_threshold`` and ``per_class`` (``d2nb.thresholds.Thresholds``), its class's own."""
    per_class = getattr(score_threshold, "per_class", None)
    if per_class is None:
        return float(score_threshold)
    base = float(score_threshold.score_threshold)
    by_index = np.array([float(per_class.get(name, base)) for name in class_names] + [base])
    return by_index[np.minimum(np.asarray(classes, int), len(class_names))] if len(classes) else base
