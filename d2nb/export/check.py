"""Checking an export against the PyTorch model: the same pictures through both, compared.

Every runner is a function from an RGB picture (H x W x 3 uint8) to detections in that
picture's coordinates: ``{"boxes", "scores", "classes"}`` and, when the model has them,
``"masks"`` (N x H x W bool) and ``"keypoints"`` (N x K x 3), as ``runtime.postprocess``
returns them. ``check_runners`` runs each on the pictures, times it, and matches each
export's instances to PyTorch's: an instance is matched by the exported instance of its class
that overlaps it most, when their boxes overlap at ``Tolerance.box_iou`` or more.

    table, comparisons = check_runners({"PyTorch": reference, "ONNX (CPU)": onnx}, pictures)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2nb.data.table import Table

REFERENCE = "PyTorch"
WARMUP_RUNS = 2  # first calls compile (TorchScript's profiling executor) and allocate; not timed


@dataclass(frozen=True)
class Tolerance:
    """How close an export must stay to PyTorch to be reported as working."""

    box_iou: float = 0.99     # an instance is matched by an exported one of its class at this box IoU
    matched: float = 0.99     # share of PyTorch's instances that must be matched
    score: float = 1e-3       # largest score difference of a matched pair
    mask_iou: float = 0.98    # mask IoU each matched pair should reach...
    masks_within: float = 0.99  # ...for at least this share of the pairs
    keypoint_px: float = 1.0  # largest keypoint distance of a matched pair, in pixels


def detections_from_instances(instances) -> dict:
    """detectron2 ``Instances`` (after ``detector_postprocess``) as a runner's detections."""
    found = {"boxes": instances.pred_boxes.tensor.float().cpu().numpy(),
             "scores": instances.scores.float().cpu().numpy(),
             "classes": instances.pred_classes.cpu().numpy().astype(np.int64)}
    if instances.has("pred_masks"):
        found["masks"] = instances.pred_masks.cpu().numpy().astype(bool)
    if instances.has("pred_keypoints"):
        found["keypoints"] = instances.pred_keypoints.float().cpu().numpy()
    return found


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``len(a) x len(b)`` IoU of XYXY boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    height = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = width * height
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match(reference: dict, exported: dict, min_iou: float) -> list:
    """``[(reference index, exported index, box IoU)]``: PyTorch's instances, highest score
    first, each taking the unmatched exported instance of its class that overlaps it most,
    when that overlap reaches ``min_iou``."""
    if not len(reference["scores"]) or not len(exported["scores"]):
        return []
    ious = box_iou(reference["boxes"], exported["boxes"])
    ious[reference["classes"][:, None] != exported["classes"][None, :]] = -1
    pairs, taken = [], np.zeros(len(exported["scores"]), dtype=bool)
    for r in np.argsort(-reference["scores"], kind="stable"):
        candidates = np.where(taken, -1, ious[r])
        e = int(np.argmax(candidates))
        if candidates[e] >= min_iou:
            taken[e] = True
            pairs.append((int(r), e, float(candidates[e])))
    return pairs


def run_timed(runner, pictures: list) -> tuple:
    """``(detections per picture, milliseconds per picture)``, after ``WARMUP_RUNS`` untimed calls."""
    for _ in range(WARMUP_RUNS if pictures else 0):
        runner(pictures[0])
    results, times = [], []
    for picture in pictures:
        start = time.perf_counter()
        results.append(runner(picture))
        times.append((time.perf_counter() - start) * 1000)
    return results, times


@dataclass
class Comparison:
    """How one runtime's detections compare with the reference's, in numbers.

    ``matched`` of the reference's ``reference_instances`` have a twin (``match``);
    ``score_gaps``, ``mask_ious`` and ``keypoint_gaps`` (pixels) are per matched pair;
    ``masks_missing``/``keypoints_missing``: the reference has them, this runtime gives none.
    ``problems`` are sentences naming the runtime, what differs and what is allowed.
    """

    name: str
    reference_instances: int = 0
    instances: int = 0
    matched: int = 0
    score_gaps: list = field(default_factory=list)
    mask_ious: list = field(default_factory=list)
    keypoint_gaps: list = field(default_factory=list)
    masks_missing: bool = False
    keypoints_missing: bool = False
    latency_ms: float | None = None
    problems: list = field(default_factory=list)

    @property
    def matched_share(self) -> float:
        return self.matched / self.reference_instances if self.reference_instances else 1.0

    @property
    def max_score_diff(self) -> float:
        return max(self.score_gaps, default=0.0)

    @property
    def min_mask_iou(self) -> float | None:
        return min(self.mask_ious) if self.mask_ious else None

    @property
    def mean_mask_iou(self) -> float | None:
        return float(np.mean(self.mask_ious)) if self.mask_ious else None

    def row(self) -> dict:
        row = {"runs": self.name, "instances": self.instances,
               "matched": f"{self.matched}/{self.reference_instances} ({self.matched_share:.1%})",
               "max score diff": f"{self.max_score_diff:.1e}" if self.score_gaps else "",
               "mask IoU min / mean": (f"{self.min_mask_iou:.3f} / {self.mean_mask_iou:.3f}" if self.mask_ious
                                       else "no masks" if self.masks_missing else ""),
               "latency ms (median)": None if self.latency_ms is None else round(self.latency_ms, 1),
               "verdict": "DIFFERS" if self.problems else "matches"}
        if self.keypoint_gaps or self.keypoints_missing:
            row["keypoints max px"] = f"{max(self.keypoint_gaps):.2f}" if self.keypoint_gaps else "none"
        return row


def compare(name: str, reference: list, exported: list, tolerance: Tolerance = Tolerance()) -> Comparison:
    """How ``exported`` (detections per picture) matches ``reference``, with the problems
    that ``tolerance`` finds."""
    result = Comparison(name)
    for ref, exp in zip(reference, exported):
        pairs = match(ref, exp, tolerance.box_iou)
        result.reference_instances += len(ref["scores"])
        result.instances += len(exp["scores"])
        result.matched += len(pairs)
        result.score_gaps += [abs(float(ref["scores"][r]) - float(exp["scores"][e])) for r, e, _ in pairs]
        if "masks" in ref:
            result.masks_missing |= "masks" not in exp
            if "masks" in exp:
                result.mask_ious += [mask_iou(ref["masks"][r], exp["masks"][e]) for r, e, _ in pairs]
        if "keypoints" in ref:
            result.keypoints_missing |= "keypoints" not in exp
            if "keypoints" in exp:
                result.keypoint_gaps += [float(np.abs(ref["keypoints"][r][:, :2] - exp["keypoints"][e][:, :2]).max())
                                         for r, e, _ in pairs]
    result.problems = _problems(result, tolerance)
    return result


def _problems(result: Comparison, tolerance: Tolerance) -> list:
    name, problems = result.name, []
    if result.reference_instances == 0:
        problems.append(f"{name}: PyTorch found nothing in these pictures, so the export could not be compared; "
                        "pass sample pictures the model finds objects in")
    elif result.matched_share < tolerance.matched:
        problems.append(f"{name}: only {result.matched} of PyTorch's {result.reference_instances} instances "
                        f"({result.matched_share:.1%}) have an exported twin of the same class at box IoU >= "
                        f"{tolerance.box_iou} (needed: {tolerance.matched:.0%}); the export finds "
                        f"{result.instances} instances")
    if result.max_score_diff > tolerance.score:
        problems.append(f"{name}: scores differ from PyTorch's by up to {result.max_score_diff:.2g} "
                        f"(allowed: {tolerance.score:g})")
    if result.masks_missing:
        problems.append(f"{name}: drops the masks: PyTorch predicts a mask per instance, the export gives none")
    low_masks = sum(iou < tolerance.mask_iou for iou in result.mask_ious)
    if result.mask_ious and 1 - low_masks / len(result.mask_ious) < tolerance.masks_within:
        problems.append(f"{name}: {low_masks} of {len(result.mask_ious)} matched masks overlap PyTorch's at IoU "
                        f"under {tolerance.mask_iou} (lowest {result.min_mask_iou:.3f}; allowed: "
                        f"{1 - tolerance.masks_within:.0%} of them)")
    if result.keypoints_missing:
        problems.append(f"{name}: drops the keypoints: PyTorch predicts them, the export gives none")
    if max(result.keypoint_gaps, default=0.0) > tolerance.keypoint_px:
        problems.append(f"{name}: keypoints are up to {max(result.keypoint_gaps):.1f} px from PyTorch's "
                        f"(allowed: {tolerance.keypoint_px} px)")
    return problems


def check_runners(runners: dict, pictures: list, tolerance: Tolerance = Tolerance(), noisy_reference=None) -> tuple:
    """``(Table, comparisons)`` for ``runners`` (name -> runner; the first is the reference,
    ``REFERENCE``) on RGB ``pictures``: one row per runner with its match to the reference
    and its median latency on this machine, and a ``Comparison`` per other runner.

    ``noisy_reference``: the reference with float32 rounding noise added inside it, run when
    an export differs, to tell an unfaithful export from a model whose detections hinge on
    rounding (random or barely trained weights), which no export can reproduce."""
    names = list(runners)
    results, rows, comparisons = {}, [], []
    for name in names:
        results[name], times = run_timed(runners[name], pictures)
        latency = float(np.median(times)) if times else None
        if name == names[0]:
            count = sum(len(found["scores"]) for found in results[name])
            rows.append({"runs": name, "instances": count, "matched": "reference",
                         "latency ms (median)": None if latency is None else round(latency, 1), "verdict": "reference"})
            continue
        comparisons.append(compare(name, results[names[0]], results[name], tolerance))
        comparisons[-1].latency_ms = latency
        rows.append(comparisons[-1].row())
    differs = any(c.problems for c in comparisons)
    if differs and noisy_reference is not None and any(len(found["scores"]) for found in results[names[0]]):
        noisy = compare(f"{names[0]} + rounding noise", results[names[0]], [noisy_reference(p) for p in pictures],
                        tolerance)
        rows.append({**noisy.row(), "verdict": "unstable" if noisy.problems else "stable"})
        if noisy.problems:
            comparisons[-1].problems.append(
                f"{names[0]} itself is unstable on these pictures: with its layers' inputs changed by one part in "
                f"a million (float32 rounding), it keeps only {noisy.matched_share:.1%} of its own detections; so the "
                "differences above cannot be told from rounding, which every runtime does its own way. Random or "
                "barely trained weights do this; check the export with trained weights")
    columns = ["runs", "instances", "matched", "max score diff", "mask IoU min / mean", "keypoints max px",
               "latency ms (median)", "verdict"]
    present = [c for c in columns if any(row.get(c) not in (None, "") for row in rows)]
    title = (f"{len(pictures)} pictures; matched: PyTorch's instances with an exported twin of their class at "
             f"box IoU >= {tolerance.box_iou}")
    return Table(rows, present, title=title), comparisons


# --------------------------------------------------------------------------- without torch

BLOCKED_MODULES = ("torch", "torchvision", "detectron2", "d2nb")
_BLOCKER = """import sys


class BlockedModules:  # written by d2nb.export.check.run_standalone
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked here: this run checks that the code needs only numpy, "
                              "onnxruntime and opencv")
        return None


sys.meta_path.insert(0, BlockedModules())
"""


def run_standalone(arguments: list, cwd=None, blocked=BLOCKED_MODULES, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python *arguments`` in a fresh interpreter in which importing torch, torchvision,
    detectron2 or d2nb raises ``ImportError`` (a ``sitecustomize`` on its ``PYTHONPATH``): how a
    machine with only numpy, onnxruntime and opencv runs ``run_onnx.py``."""
    with tempfile.TemporaryDirectory(prefix="d2nb_standalone_") as folder:
        Path(folder, "sitecustomize.py").write_text(_BLOCKER.format(blocked=tuple(blocked)))
        env = dict(os.environ, PYTHONPATH=folder)
        return subprocess.run([sys.executable, *map(str, arguments)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
