"""Error analysis of an evaluation: what the AP numbers are made of, and where the model fails.

Everything starts from two files an evaluation leaves (``d2nb.evaluate``): the COCO
annotation file the results were scored against (``gt_json``) and detectron2's
``coco_instances_results.json``. Each function also takes them in memory (a COCO dict, a
list of result dicts), which is how the tests build cases with known answers.

    coco_eval = run_cocoeval(result.gt_json, result.results_json, "bbox")
    per_category_ap(coco_eval)                      # {"circle": 71.2, ...}, AP x 100
    matches = match_detections(result.gt_json, result.results_json, score_threshold=0.5)
    confusion_matrix(matches).matrix                # rows: ground truth, columns: predicted
    worst_images(matches, class_name="circle")      # missed + false positives, worst first

The AP numbers come from pycocotools' own ``COCOeval`` arrays (``eval["precision"]``, shape
[T IoU thresholds, R recall levels, K classes, A areas, M max detections]). The confusion
matrix, true/false positives and the gallery come from ``match_detections``: a greedy
matching by score in each image at one IoU threshold (0.5). Plotting functions return
matplotlib ``Figure`` objects (no pyplot: nothing is shown twice); ``figure_png`` turns one
into PNG bytes for a widget or a file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from d2nb.errors import D2nbError

IOU_THRESHOLD = 0.5
BACKGROUND = "background"
TASKS = ("bbox", "segm", "keypoints")


# --------------------------------------------------------------------------- loading


def load_ground_truth(gt):
    """A pycocotools ``COCO`` from a COCO json path or an already loaded dict."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if not isinstance(gt, dict):
        path = Path(str(gt))
        if not path.is_file():
            raise D2nbError(f"ground-truth file {str(path)!r} does not exist",
                            "pass the gt_json an evaluation wrote into its metrics.json, or a COCO json path")
        gt = json.loads(path.read_text())
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints "creating index..."
        coco.createIndex()
    return coco


def load_detections(detections) -> list:
    """COCO-format results (``image_id``, ``category_id``, ``bbox``, ``score``...) from a
    ``coco_instances_results.json`` path or a list."""
    if isinstance(detections, (list, tuple)):
        return [dict(d) for d in detections]
    path = Path(str(detections))
    if not path.is_file():
        raise D2nbError(f"results file {str(path)!r} does not exist",
                        "evaluate first (d2nb.evaluate.evaluate); it writes inference/coco_instances_results.json")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- COCOeval arrays


def run_cocoeval(gt, detections, task: str = "bbox"):
    """pycocotools' official ``COCOeval`` after evaluate, accumulate and summarize, as
    detectron2's COCOEvaluator runs it (for ``segm`` the result boxes are dropped, so that
    small/medium/large use the mask areas). Raises ``D2nbError`` when there is nothing to score."""
    from pycocotools.cocoeval import COCOeval

    if task not in TASKS:
        raise D2nbError(f"task {task!r} is not one COCOeval scores", f"pass one of {', '.join(TASKS)}")
    coco_gt = load_ground_truth(gt)
    results = load_detections(detections)
    if task == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    if task == "keypoints":
        results = [r for r in results if "keypoints" in r]
    if not results:
        raise D2nbError(f"no {task} predictions to score", "evaluate a model that predicts "
                        + {"bbox": "boxes", "segm": "masks", "keypoints": "keypoints"}[task])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), task)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def per_category_ap(coco_eval) -> dict:
    """``{class name: AP x 100}``, as detectron2 computes its per-category table: the mean of
    ``precision[:, :, k, area all, max detections]`` over entries that exist; ``nan`` for a
    class with no ground truth."""
    precision = coco_eval.eval["precision"]
    names = {c["id"]: c["name"] for c in coco_eval.cocoGt.dataset["categories"]}
    result = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        result[names[category_id]] = float(np.mean(values) * 100) if values.size else float("nan")
    return result


@dataclass
class PrecisionRecall:
    """Precision at COCO's 101 recall levels: ``precision[i]`` is the curve of ``labels[i]``
    (an IoU threshold or a class), ``nan`` where COCOeval has no value."""

    recall: np.ndarray
    precision: np.ndarray
    labels: list


def precision_recall_by_iou(coco_eval, class_name=None) -> PrecisionRecall:
    """One curve per IoU threshold (0.50:0.05:0.95), for one class or averaged over the
    classes that have ground truth."""
    precision = _precision(coco_eval)[:, :, _class_slice(coco_eval, class_name), 0, -1]
    with np.errstate(all="ignore"), _quiet_empty_mean():
        curves = np.nanmean(precision, axis=2)
    return PrecisionRecall(coco_eval.params.recThrs, curves, [f"IoU {t:.2f}" for t in coco_eval.params.iouThrs])


def precision_recall_by_class(coco_eval, iou_threshold: float = IOU_THRESHOLD) -> PrecisionRecall:
    """One curve per class at one IoU threshold."""
    thresholds = coco_eval.params.iouThrs
    t = int(np.argmin(np.abs(thresholds - iou_threshold)))
    if abs(thresholds[t] - iou_threshold) > 1e-6:
        raise D2nbError(f"iou_threshold={iou_threshold} is not one of COCOeval's thresholds",
                        "pass one of " + ", ".join(f"{x:.2f}" for x in thresholds))
    curves = _precision(coco_eval)[t, :, :, 0, -1].T
    return PrecisionRecall(coco_eval.params.recThrs, curves, _category_names(coco_eval))


def _precision(coco_eval) -> np.ndarray:
    precision = np.array(coco_eval.eval["precision"], dtype=float)
    precision[precision < 0] = np.nan
    return precision


def _category_names(coco_eval) -> list:
    names = {c["id"]: c["name"] for c in coco_eval.cocoGt.dataset["categories"]}
    return [names[i] for i in coco_eval.params.catIds]


def _class_slice(coco_eval, class_name):
    if class_name is None:
        return slice(None)
    names = _category_names(coco_eval)
    if class_name not in names:
        raise D2nbError(f"class {class_name!r} is not a category of this dataset", f"pass one of {names}")
    return slice(names.index(class_name), names.index(class_name) + 1)


@contextlib.contextmanager
def _quiet_empty_mean():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without ground truth: all nan
        yield


# --------------------------------------------------------------------------- matching


@dataclass
class ImageMatches:
    """One image's ground truth and predictions, matched at an IoU threshold.

    Classes are detectron2's contiguous indices (position in ``class_names``); boxes are
    COCO's ``[x, y, width, height]``. ``pred_gt[d]`` is the ground truth prediction ``d``
    matched (-1: none, a false positive on background); ``gt_pred[g]`` the prediction
    matched to ground truth ``g`` (-1: missed).
    """

    image_id: int
    file_name: str
    gt_classes: np.ndarray
    gt_boxes: np.ndarray
    pred_classes: np.ndarray
    pred_scores: np.ndarray
    pred_boxes: np.ndarray
    pred_gt: np.ndarray
    gt_pred: np.ndarray
    iou: np.ndarray | None = None  # [prediction, ground truth] overlap the matching used

    @property
    def true_positives(self) -> np.ndarray:
        """Per prediction: matched to a ground truth of its own class."""
        matched = self.pred_gt >= 0
        hit = np.zeros(len(self.pred_gt), bool)
        hit[matched] = self.gt_classes[self.pred_gt[matched]] == self.pred_classes[matched]
        return hit

    @property
    def found(self) -> np.ndarray:
        """Per ground truth: matched by a prediction of its own class."""
        return np.array([p >= 0 and self.pred_classes[p] == c for p, c in zip(self.gt_pred, self.gt_classes)],
                        dtype=bool)

    def missed(self, class_index=None) -> int:
        keep = np.ones(len(self.gt_classes), bool) if class_index is None else self.gt_classes == class_index
        return int(np.sum(~self.found & keep))

    def false_positives(self, class_index=None) -> int:
        keep = np.ones(len(self.pred_classes), bool) if class_index is None else self.pred_classes == class_index
        return int(np.sum(~self.true_positives & keep))

    def errors(self, class_index=None) -> int:
        """Missed ground truths plus false positive predictions (of one class, or all)."""
        return self.missed(class_index) + self.false_positives(class_index)


def match_detections(gt, detections, iou_threshold: float = IOU_THRESHOLD, score_threshold: float = 0.0,
                     task: str = "bbox") -> list:
    """``ImageMatches`` for every image of ``gt`` (crowd regions left out), predictions
    below ``score_threshold`` dropped. ``task`` "segm" measures overlap on masks.

    The matching is greedy by score in each image, in two passes: first each prediction,
    highest score first, takes the unmatched ground truth *of its class* it overlaps most
    (IoU >= ``iou_threshold``), as COCOeval does; then each prediction still unmatched takes
    the unmatched ground truth of *another* class it overlaps most: a class confusion. What
    is left is a false positive on background, or a missed ground truth.
    """
    coco = load_ground_truth(gt)
    index_of = {c["id"]: i for i, c in enumerate(sorted(coco.dataset["categories"], key=lambda c: c["id"]))}
    by_image = {}
    for d in load_detections(detections):
        if d["score"] >= score_threshold:
            by_image.setdefault(d["image_id"], []).append(d)
    matches = []
    for image_id in sorted(coco.imgs):
        gts = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        preds = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])
        iou = _overlaps(coco, gts, preds, task)
        gt_classes = np.array([index_of[a["category_id"]] for a in gts], dtype=int)
        pred_classes = np.array([index_of[d["category_id"]] for d in preds], dtype=int)
        pred_gt, gt_pred = _greedy_match(iou, gt_classes, pred_classes, iou_threshold)
        matches.append(ImageMatches(
            image_id, coco.imgs[image_id].get("file_name", str(image_id)), gt_classes,
            np.array([a["bbox"] for a in gts], dtype=float).reshape(-1, 4), pred_classes,
            np.array([d["score"] for d in preds], dtype=float),
            np.array([d["bbox"] for d in preds], dtype=float).reshape(-1, 4), pred_gt, gt_pred, iou))
    return matches


def _overlaps(coco, gts: list, preds: list, task: str) -> np.ndarray:
    """IoU of each prediction (rows) with each ground truth (columns)."""
    from pycocotools import mask as mask_util

    if not gts or not preds:
        return np.zeros((len(preds), len(gts)))
    if task == "segm":
        gt_regions = [coco.annToRLE(a) for a in gts]
        pred_regions = [d["segmentation"] for d in preds]
    else:
        gt_regions = [list(map(float, a["bbox"])) for a in gts]
        pred_regions = [list(map(float, d["bbox"])) for d in preds]
    return np.asarray(mask_util.iou(pred_regions, gt_regions, [0] * len(gts))).reshape(len(preds), len(gts))


def _greedy_match(iou: np.ndarray, gt_classes, pred_classes, iou_threshold: float) -> tuple:
    pred_gt = np.full(len(pred_classes), -1, dtype=int)
    gt_pred = np.full(len(gt_classes), -1, dtype=int)
    for same_class in (True, False):  # predictions are in score order already
        for d in range(len(pred_classes)):
            if pred_gt[d] >= 0:
                continue
            allowed = (gt_pred < 0) & (iou[d] >= iou_threshold)
            allowed &= (gt_classes == pred_classes[d]) if same_class else True
            if allowed.any():
                g = int(np.argmax(np.where(allowed, iou[d], -1.0)))
                pred_gt[d], gt_pred[g] = g, d
    return pred_gt, gt_pred


@dataclass
class ConfusionMatrix:
    """Counts of ground truth class (rows) against predicted class (columns); the last row
    and column are ``background``: a prediction with no ground truth under it (last row), a
    ground truth no prediction found (last column)."""

    matrix: np.ndarray
    labels: list
    iou_threshold: float
    score_threshold: float | None = None


def confusion_matrix(matches: list, class_names: list, score_threshold: float | None = None) -> ConfusionMatrix:
    """The confusion matrix of ``match_detections``' result (its thresholds apply)."""
    k = len(class_names)
    matrix = np.zeros((k + 1, k + 1), dtype=int)
    for m in matches:
        for d, g in enumerate(m.pred_gt):
            matrix[m.gt_classes[g] if g >= 0 else k, m.pred_classes[d]] += 1
        for g, d in enumerate(m.gt_pred):
            if d < 0:
                matrix[m.gt_classes[g], k] += 1
    return ConfusionMatrix(matrix, list(class_names) + [BACKGROUND], IOU_THRESHOLD, score_threshold)


def scores_of_true_and_false_positives(matches: list) -> tuple:
    """``(true positive scores, false positive scores)`` as two arrays; a prediction of the
    wrong class on an object counts as a false positive."""
    true, false = [], []
    for m in matches:
        hit = m.true_positives
        true.append(m.pred_scores[hit])
        false.append(m.pred_scores[~hit])
    return (np.concatenate(true) if true else np.zeros(0)), (np.concatenate(false) if false else np.zeros(0))


def worst_images(matches: list, class_names: list | None = None, class_name=None,
                 include_perfect: bool = False) -> list:
    """Images ordered worst first by missed ground truths + false positives (of
    ``class_name`` only, when given); ties keep image order. Images without such an error
    are left out unless ``include_perfect``."""
    class_index = None
    if class_name not in (None, "", "all"):
        if not class_names or class_name not in class_names:
            raise D2nbError(f"class {class_name!r} is not one of the dataset's classes",
                            f"pass one of {class_names} or None for all classes")
        class_index = class_names.index(class_name)
    ordered = sorted(matches, key=lambda m: -m.errors(class_index))
    return [m for m in ordered if include_perfect or m.errors(class_index) > 0]


# --------------------------------------------------------------------------- figures


def figure_png(fig, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib figure, for ``ipywidgets.Image`` or ``IPython.display.Image``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def show(fig) -> None:
    """Show a figure in a notebook as a PNG output (a plain ``Figure`` has no display of its own)."""
    from IPython.display import Image, display

    display(Image(data=figure_png(fig), format="png"))


def _figure(width: float, height: float, **subplots):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, layout="constrained")
    return fig, fig.subplots(**subplots)


def plot_per_category_ap(ap_by_class: dict, title: str = "AP per category") -> object:
    """Horizontal bars of AP x 100 per class; a class without ground truth is marked, not drawn as 0."""
    names = list(ap_by_class)
    values = np.array([ap_by_class[n] for n in names], dtype=float)
    fig, ax = _figure(7, 0.6 + 0.35 * max(len(names), 2))
    ax.barh(range(len(names)), np.nan_to_num(values), color="tab:blue")
    for i, value in enumerate(values):
        ax.text(0 if np.isnan(value) else value + 1, i, "no ground truth" if np.isnan(value) else f"{value:.1f}",
                va="center", fontsize=8, color="grey" if np.isnan(value) else "black")
    ax.set(yticks=range(len(names)), yticklabels=names, xlim=(0, 105), xlabel="AP (IoU 0.50:0.95)", title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_precision_recall(coco_eval, iou_threshold: float = IOU_THRESHOLD, title: str = "") -> object:
    """Two panels: a curve per IoU threshold (classes averaged), and a curve per class at
    ``iou_threshold``."""
    fig, (by_iou, by_class) = _figure(11, 4, ncols=2)
    curves = precision_recall_by_iou(coco_eval)
    colours = _colours(len(curves.labels), "viridis")
    for curve, label, colour in zip(curves.precision, curves.labels, colours):
        by_iou.plot(curves.recall, curve, label=label, color=colour)
    by_iou.set(title=f"{title} per IoU threshold (classes averaged)".strip())
    curves = precision_recall_by_class(coco_eval, iou_threshold)
    for curve, label in zip(curves.precision, curves.labels):
        if np.isfinite(curve).any():
            by_class.plot(curves.recall, curve, label=label)
    by_class.set(title=f"{title} per class at IoU {iou_threshold:.2f}".strip())
    for ax in (by_iou, by_class):
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_confusion_matrix(confusion: ConfusionMatrix) -> object:
    """The matrix as a heat map with its counts; rows ground truth, columns predicted."""
    n = len(confusion.labels)
    fig, ax = _figure(1.8 + 0.6 * n, 1.6 + 0.55 * n)
    ax.imshow(confusion.matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(confusion.matrix):
        ax.text(column, row, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > confusion.matrix.max() / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="ground truth")
    ax.set_xticklabels(confusion.labels, rotation=45, ha="right")
    ax.set_yticklabels(confusion.labels)
    threshold = "" if confusion.score_threshold is None else f", score >= {confusion.score_threshold:g}"
    ax.set_title(f"IoU {confusion.iou_threshold:.2f}{threshold}", fontsize=10)
    return fig


def plot_score_histograms(true_scores: np.ndarray, false_scores: np.ndarray, bins: int = 20) -> object:
    """Scores of true and false positives: a threshold belongs where they separate."""
    fig, ax = _figure(6, 3.2)
    edges = np.linspace(0, 1, bins + 1)
    ax.hist(true_scores, bins=edges, alpha=0.6, label=f"true positives ({len(true_scores)})", color="tab:green")
    ax.hist(false_scores, bins=edges, alpha=0.6, label=f"false positives ({len(false_scores)})", color="tab:red")
    ax.set(xlabel="score", ylabel="predictions", xlim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _colours(count: int, cmap: str) -> list:
    from matplotlib import colormaps

    return [colormaps[cmap](x) for x in np.linspace(0, 0.9, max(count, 1))]


# --------------------------------------------------------------------------- error gallery

FOUND, MISSED, CONFUSED = "tab:green", "tab:red", "tab:orange"


def read_image(image_root, file_name) -> np.ndarray:
    """An RGB picture of the dataset, with an error naming the file when it cannot be read."""
    import cv2

    path = Path(str(image_root or "")) / file_name
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if picture is None:
        raise D2nbError(f"cannot read image {str(path)!r}", "pass image_root= the folder holding the dataset's images")
    return picture[:, :, ::-1]


def draw_errors(axes, image: ImageMatches, picture: np.ndarray, class_names: list) -> None:
    """Ground truth on ``axes[0]`` (green found, red missed) and predictions on ``axes[1]``
    (green true positive, orange wrong class, red on background)."""
    from matplotlib.patches import Rectangle

    ground_truth, predictions = axes
    found, hit = image.found, image.true_positives
    for ax, title in ((ground_truth, f"ground truth: {image.missed()} missed"),
                      (predictions, f"predictions: {image.false_positives()} false positives")):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    for g, (box, c) in enumerate(zip(image.gt_boxes, image.gt_classes)):
        colour = FOUND if found[g] else MISSED
        ground_truth.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, color=colour, linewidth=1.2))
        ground_truth.text(box[0], box[1], class_names[c], color=colour, fontsize=6, va="bottom")
    for d, (box, c, score) in enumerate(zip(image.pred_boxes, image.pred_classes, image.pred_scores)):
        colour = FOUND if hit[d] else (CONFUSED if image.pred_gt[d] >= 0 else MISSED)
        predictions.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, color=colour, linewidth=1.2))
        predictions.text(box[0], box[1], f"{class_names[c]} {score:.2f}", color=colour, fontsize=6, va="bottom")


def plot_error_gallery(images: list, image_root, class_names: list, count: int = 4) -> object:
    """The first ``count`` of ``images`` (e.g. ``worst_images``'s order): each row shows the
    ground truth beside the predictions."""
    shown = images[:count]
    if not shown:
        fig, ax = _figure(6, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no image with errors at this threshold", ha="center", va="center")
        return fig
    fig, axes = _figure(8, 3.8 * len(shown), nrows=len(shown), ncols=2, squeeze=False)
    for row, image in zip(axes, shown):
        draw_errors(row, image, read_image(image_root, image.file_name), class_names)
        row[0].set_title(f"{image.file_name}\n" + row[0].get_title(), fontsize=8)
    return fig


# --------------------------------------------------------------------------- AP over training


def ap_over_training(output_dir) -> dict:
    """``{"bbox/AP": array of [iterations done, AP] rows, "segm/AP50": ...}`` from the
    evaluation entries a training run (03_train, ``d2nb train``) wrote into
    ``output_dir/metrics.json``."""
    path = Path(str(output_dir)) / "metrics.json"
    max_iter = _max_iter(Path(str(output_dir)) / "config.yaml")
    if not path.is_file():
        raise D2nbError(f"{str(path)!r} does not exist", "pass the output_dir of a training run (03_train)")
    series = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run
        if not isinstance(row, dict):
            continue
        for key, value in row.items():
            if key.split("/")[0] in TASKS and "/AP" in key and "iteration" in row:
                # periodic evaluations log the step index (29 after 30 steps), the final one max_iter
                done = min(row["iteration"] + 1, max_iter or row["iteration"] + 1)
                series.setdefault(key, []).append((done, value))
    if not series:
        raise D2nbError(f"{str(path)!r} holds no evaluation entries (bbox/AP, segm/AP...)",
                        "train with a validation dataset; eval_period=N evaluates every N iterations")
    return {key: np.array(points, dtype=float) for key, points in series.items()}


def _max_iter(config_yaml: Path):
    import yaml

    try:
        return int(yaml.safe_load(config_yaml.read_text())["SOLVER"]["MAX_ITER"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def plot_ap_over_training(runs, keys=("bbox/AP", "segm/AP", "keypoints/AP", "bbox/AP50", "segm/AP50")) -> object:
    """AP against iteration for one run or several side by side (same y axis), e.g.
    ``plot_ap_over_training(["runs/train", "runs/longer"])``. ``runs`` may also be a dict
    ``{label: output_dir}``."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    labelled = list(runs.items()) if isinstance(runs, dict) else [(str(r), r) for r in runs]
    fig, axes = _figure(5.5 * len(labelled), 3.6, ncols=len(labelled), sharey=True, squeeze=False)
    for ax, (label, folder) in zip(axes[0], labelled):
        series = ap_over_training(folder)
        for key in [k for k in keys if k in series]:
            points = series[key]
            ax.plot(points[:, 0], points[:, 1], marker="o", label=key, linestyle="--" if "AP50" in key else "-")
        ax.set(title=label, xlabel="iteration", ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("AP")
    return fig
