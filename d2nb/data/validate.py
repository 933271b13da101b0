"""Checking a COCO json and its images before training, and writing a repaired copy.

    report = validate_coco("train/_annotations.coco.json")   # or a registered dataset name
    report                      # each kind of issue found: severity, count, examples
    report.counts["box_outside_image"]
    fixed = fix_coco(report, "runs/dataset_prep/fixed.json", clip_boxes=True)

Severities say what detectron2 would do: an ``error`` stops training or trains on wrong
data, a ``warning`` is something detectron2 silently drops or changes, a ``note`` is worth
knowing (images without annotations, declared categories no annotation uses, such as a
Roboflow export's placeholder id 0). Images are checked by their header only (PIL reads
the size without decoding pixels). ``fix_coco`` writes a new json and never touches the
user's file.
"""

from __future__ import annotations

import math
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from d2nb.data.register import open_coco, write_coco_json
from d2nb.data.table import Table
from d2nb.errors import D2nbError

IssueKind = namedtuple("IssueKind", "severity target meaning fix")
# One row per kind of issue: what it means for training and which fix_coco() option repairs it.
ISSUE_KINDS = {
    "missing_image": IssueKind("error", "image", "image file not found under image_root",
                               "drop_missing_images"),
    "unreadable_image": IssueKind("error", "image", "file exists but is not a picture PIL can open",
                                  "drop_missing_images"),
    "image_size_missing": IssueKind("error", "image", "no height/width in the json (detectron2 needs them)",
                                    "repair_sizes"),
    "size_mismatch": IssueKind("error", "image", "height/width in the json differ from the file "
                               "(detectron2 stops with SizeMismatchError)", "repair_sizes"),
    "duplicate_image_id": IssueKind("error", "image", "image id used by an earlier image too",
                                    "renumber_duplicate_ids (drops the later image)"),
    "duplicate_annotation_id": IssueKind("error", "annotation", "annotation id used twice "
                                         "(detectron2 asserts ids are unique)", "renumber_duplicate_ids"),
    "duplicate_category_id": IssueKind("error", "category", "category id declared twice",
                                       "renumber_duplicate_ids (drops the later category)"),
    "unknown_category": IssueKind("error", "annotation", "category_id not declared in 'categories' "
                                  "(detectron2 raises KeyError)", "drop_unknown_categories"),
    "annotation_without_image": IssueKind("warning", "annotation", "image_id names no image "
                                          "(detectron2 ignores it)", "drop_orphan_annotations"),
    "malformed_box": IssueKind("error", "annotation", "bbox missing or not 4 finite numbers",
                               "drop_empty_boxes"),
    "empty_box": IssueKind("warning", "annotation", "box width or height is zero or negative",
                           "drop_empty_boxes"),
    "box_outside_image": IssueKind("warning", "annotation", "box reaches outside the image", "clip_boxes"),
    "polygon_too_short": IssueKind("warning", "annotation", "a polygon has fewer than 3 points "
                                   "(detectron2 drops it)", "repair_polygons"),
    "polygon_odd_coordinates": IssueKind("warning", "annotation", "a polygon has an odd number of "
                                         "coordinates (detectron2 drops it)", "repair_polygons"),
    "empty_segmentation": IssueKind("error", "annotation", "no mask while other annotations have masks "
                                    "(mask training fails)", "drop_empty_segmentations"),
    "image_without_annotations": IssueKind("note", "image", "image has no annotation (detectron2 "
                                           "skips it in training by default)", "drop_images_without_annotations"),
    "unused_category": IssueKind("note", "category", "declared category no annotation uses (a class the "
                                 "model predicts, unless it is Roboflow's placeholder id 0, which d2nb leaves out)",
                                 "drop_unused_categories"),
    "duplicate_category_name": IssueKind("warning", "category", "category name declared by an earlier category "
                                         "too (the classes would print twice, two rows in every AP table)",
                                         "rename one; Roboflow's placeholder id 0 is left out by default"),
    "rare_category": IssueKind("warning", "category", "class with fewer instances than min_instances in this "
                               "split (the model will hardly learn it)", "label more examples, or merge the class"),
}
SEVERITIES = ("error", "warning", "note")
BOX_TOLERANCE = 0.01  # pixels a box may pass the image border by (float rounding in exports)
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_image_size(path) -> tuple:
    """``(height, width)`` of a picture as detectron2 sees it (EXIF rotation applied),
    from its header only. Raises ``OSError`` (``FileNotFoundError``) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format in ("JPEG", "MPO") and \
                    image.getexif().get(_EXIF_ORIENTATION, 1) in _ROTATED_ORIENTATIONS:
                width, height = height, width
    except UnidentifiedImageError as error:
        raise OSError(str(error)) from None
    return int(height), int(width)


@dataclass
class ValidationReport:
    """What ``validate_coco`` found. ``counts[kind]`` for every kind in ``ISSUE_KINDS``;
    ``examples[kind]``: a few readable lines; ``indices[kind]``: positions in the json's
    images / annotations / categories lists (what ``fix_coco`` acts on)."""

    json_file: str | None
    image_root: str | None
    num_images: int
    num_annotations: int
    categories: list  # [{"id", "name", "instances"}] in declared order
    has_masks: bool
    expect_masks: bool
    images_checked: bool
    counts: dict
    examples: dict
    indices: dict = field(repr=False)
    file_sizes: dict = field(repr=False, default_factory=dict)  # image index -> (h, w) read from the file
    num_polygon_annotations: int = 0
    json_mtime_ns: int | None = field(repr=False, default=None)
    seconds: float = 0.0

    def count(self, severity: str) -> int:
        return sum(n for kind, n in self.counts.items() if ISSUE_KINDS[kind].severity == severity)

    @property
    def ok(self) -> bool:
        """True when nothing would stop training or train on wrong data."""
        return self.count("error") == 0

    @property
    def unused_category_ids(self) -> list:
        return [c["id"] for c in self.categories if c["instances"] == 0]

    def rows(self, all_kinds: bool = False) -> list:
        """One row per kind of issue found (every kind with ``all_kinds``), errors first."""
        rows = [{"issue": kind, "severity": info.severity, "count": self.counts[kind],
                 "meaning": info.meaning, "fix option": info.fix, "examples": " | ".join(self.examples[kind][:3])}
                for kind, info in ISSUE_KINDS.items() if all_kinds or self.counts[kind]]
        return sorted(rows, key=lambda row: SEVERITIES.index(row["severity"]))

    def to_frame(self, all_kinds: bool = False):
        """The rows as a pandas DataFrame (a ``Table`` when pandas is not installed)."""
        return Table(self.rows(all_kinds), title=self.headline()).to_frame()

    def headline(self) -> str:
        source = self.json_file or "in-memory COCO dict"
        images = "" if self.images_checked else ", image files not read"
        return (f"{source}: {self.num_images} images, {self.num_annotations} annotations, "
                f"{len(self.categories)} categories, {'masks' if self.has_masks else 'boxes only'}{images} — "
                f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('note')} notes")

    def summary(self) -> dict:
        """Plain numbers for a json file or a test: counts, categories, masks."""
        return {"json_file": self.json_file, "image_root": self.image_root, "ok": self.ok,
                "num_images": self.num_images, "num_annotations": self.num_annotations,
                "num_categories": len(self.categories), "categories": self.categories,
                "unused_category_ids": self.unused_category_ids, "has_masks": self.has_masks,
                "num_polygon_annotations": self.num_polygon_annotations,
                "images_checked": self.images_checked, "counts": dict(self.counts),
                "examples": {k: v for k, v in self.examples.items() if v}, "seconds": round(self.seconds, 3)}

    def save(self, path, **extra) -> Path:
        """Write ``summary()`` (and any ``extra`` json-able values) as json; return the path."""
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.summary(), **extra}, indent=1, default=str))
        return path

    def _repr_html_(self) -> str:
        import html

        table = Table(self.rows()) if any(self.counts.values()) else None
        return f"<p>{html.escape(self.headline())}</p>" + (table._repr_html_() if table else "<p>No issues.</p>")

    def __str__(self) -> str:
        return self.headline() + ("\n" + str(Table(self.rows())) if any(self.counts.values()) else "\nNo issues.")

    __repr__ = __str__  # a notebook's text output shows the table, not every field


def validate_coco(source, image_root=None, expect_masks: bool | None = None, check_images: bool = True,
                  max_examples: int = 5, min_instances: int = 0) -> ValidationReport:
    """Check a COCO dataset: a json path, a loaded dict, or a registered dataset name.

    ``image_root`` defaults to the json's folder (or the registered one). ``expect_masks``
    None means "when any annotation has a mask"; True reports every annotation without one.
    ``check_images=False`` skips reading image headers (missing files and sizes are then
    not checked). ``min_instances``: a used class with fewer instances is reported
    (``rare_category``; pass 10 for a training split). Raises ``D2nbError`` when the json
    cannot be read.
    """
    started = time.perf_counter()
    source = open_coco(source, image_root)
    images, annotations, categories = (source.coco[k] for k in ("images", "annotations", "categories"))
    found = _Findings(max_examples)
    checking = check_images and source.image_root is not None
    if checking and not Path(source.image_root).is_dir():
        raise D2nbError(f"image folder {str(source.image_root)!r} does not exist",
                        "pass image_root= the folder holding the images named in the json, "
                        "or check_images=False to check the annotations only")
    index_of_image, heights, widths = _check_image_entries(images, found)
    file_sizes = _check_image_files(images, Path(source.image_root), heights, widths, found) if checking else {}
    declared = _check_categories(categories, found)
    image_of = _check_links(annotations, index_of_image, declared, found)
    _check_boxes(annotations, image_of, heights, widths, found)
    masks, polygons = _check_segmentations(annotations, found)
    has_masks = bool(masks.any())
    expect_masks = has_masks if expect_masks is None else bool(expect_masks)
    if expect_masks:
        for index in np.flatnonzero(~masks):
            found.add("empty_segmentation", int(index), lambda i=index: f"annotation id {annotations[i].get('id')!r}")
    used = _check_coverage(images, categories, annotations, index_of_image, image_of, found)
    _check_category_names(categories, used, min_instances, found)

    json_file = source.json_file
    return ValidationReport(
        json_file=str(json_file) if json_file else None,
        image_root=str(source.image_root) if source.image_root else None,
        num_images=len(images), num_annotations=len(annotations),
        categories=[{"id": c.get("id"), "name": c.get("name"), "instances": used.get(c.get("id"), 0)}
                    for c in categories],
        has_masks=has_masks, expect_masks=expect_masks, images_checked=checking,
        counts={kind: len(found.indices[kind]) for kind in ISSUE_KINDS},
        examples=found.examples, indices=found.indices, file_sizes=file_sizes,
        num_polygon_annotations=int(polygons.sum()),
        json_mtime_ns=json_file.stat().st_mtime_ns if json_file else None,
        seconds=time.perf_counter() - started)


def _check_image_entries(images, found) -> tuple:
    """Duplicate ids and missing sizes; return (first position of each id, heights, widths)."""
    image_ids = [image.get("id") for image in images]
    for index in _later_duplicates(image_ids):
        found.add("duplicate_image_id", index, lambda i=index: f"image {_describe_image(images[i])}")
    heights = _numbers([image.get("height") for image in images])
    widths = _numbers([image.get("width") for image in images])
    for index in np.flatnonzero(~(heights > 0) | ~(widths > 0)):
        found.add("image_size_missing", int(index), lambda i=index: f"image {_describe_image(images[i])}")
    return _first_positions(image_ids), heights, widths


def _check_categories(categories, found) -> set:
    category_ids = [category.get("id") for category in categories]
    for index in _later_duplicates(category_ids):
        found.add("duplicate_category_id", index,
                  lambda i=index: f"category id {category_ids[i]!r} ({categories[i].get('name')!r})")
    return set(category_ids)


def _check_links(annotations, index_of_image, declared: set, found) -> np.ndarray:
    """Duplicate annotation ids, unknown images and categories; return each annotation's
    image position (-1 for none)."""
    for index in _later_duplicates([annotation.get("id") for annotation in annotations]):
        found.add("duplicate_annotation_id", index, lambda i=index: f"annotation id {annotations[i].get('id')!r}")
    image_of = np.fromiter((index_of_image.get(a.get("image_id"), -1) for a in annotations),
                           np.int64, len(annotations))
    for index in np.flatnonzero(image_of < 0):
        found.add("annotation_without_image", int(index), lambda i=index: (
            f"annotation id {annotations[i].get('id')!r} names image_id {annotations[i].get('image_id')!r}"))
    for index, annotation in enumerate(annotations):
        if annotation.get("category_id") not in declared:
            found.add("unknown_category", index, lambda a=annotation: (
                f"annotation id {a.get('id')!r}: category_id {a.get('category_id')!r} "
                f"(declared: {sorted(declared, key=str)})"))
    return image_of


def _check_coverage(images, categories, annotations, index_of_image, image_of, found) -> dict:
    """Images without annotations and declared categories never used (notes); return
    ``{category id: instances}``."""
    per_image = np.bincount(image_of[image_of >= 0], minlength=len(images))
    for index in np.flatnonzero(per_image == 0):
        if index_of_image.get(images[index].get("id")) == index:  # a duplicate id is reported already
            found.add("image_without_annotations", int(index), lambda i=index: f"image {_describe_image(images[i])}")
    used = {}
    for annotation in annotations:
        used[annotation.get("category_id")] = used.get(annotation.get("category_id"), 0) + 1
    duplicates = set(found.indices["duplicate_category_id"])
    for index, category in enumerate(categories):
        if used.get(category.get("id"), 0) == 0 and index not in duplicates:
            found.add("unused_category", index,
                      lambda c=category: f"category id {c.get('id')!r} ({c.get('name')!r})")
    return used


def _check_category_names(categories, used: dict, min_instances: int, found) -> None:
    first_with_name = {}
    for index, category in enumerate(categories):
        name = str(category.get("name", "")).strip()
        if name in first_with_name:
            earlier = categories[first_with_name[name]]
            found.add("duplicate_category_name", index, lambda c=category, e=earlier: (
                f"category ids {e.get('id')!r} and {c.get('id')!r} are both named {c.get('name')!r}"))
        else:
            first_with_name[name] = index
        instances = used.get(category.get("id"), 0)
        if 0 < instances < min_instances:
            found.add("rare_category", index, lambda c=category, n=instances: (
                f"category id {c.get('id')!r} ({c.get('name')!r}): {n} instance{'s' if n > 1 else ''}"))


class _Findings:
    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.indices = {kind: [] for kind in ISSUE_KINDS}
        self.examples = {kind: [] for kind in ISSUE_KINDS}

    def add(self, kind: str, index: int, message):
        """Record an issue; ``message`` (a string, or a function making one) is kept only
        for the first few, so a dataset with many issues costs no formatting."""
        self.indices[kind].append(int(index))
        if len(self.examples[kind]) < self.max_examples:
            self.examples[kind].append(message() if callable(message) else message)


def _first_positions(values) -> dict:
    positions = {}
    for index, value in enumerate(values):
        positions.setdefault(value, index)
    return positions


def _later_duplicates(values) -> list:
    seen, later = set(), []
    for index, value in enumerate(values):
        if value in seen:
            later.append(index)
        seen.add(value)
    return later


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(values) -> np.ndarray:
    """Floats, NaN where a value is missing or not a number."""
    try:
        array = np.array(values, dtype=np.float64)
        if array.shape == (len(values),):
            return array
    except (TypeError, ValueError):
        pass
    return np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
                     for v in values], dtype=np.float64)


def _describe_image(image: dict) -> str:
    return f"id {image.get('id')!r} {image.get('file_name')!r}"


def _check_image_files(images, image_root: Path, heights, widths, found) -> dict:
    """Read every image header; record missing, unreadable and wrongly sized files."""
    file_sizes = {}
    for index, image in enumerate(images):
        path = image_root / str(image.get("file_name", ""))
        try:
            height, width = read_image_size(path)
        except FileNotFoundError:
            found.add("missing_image", index, f"{str(path)!r} (image id {image.get('id')!r})")
            continue
        except (OSError, ValueError) as error:
            found.add("unreadable_image", index, f"{str(path)!r}: {error}")
            continue
        if (height, width) != (heights[index], widths[index]):
            file_sizes[index] = (height, width)
            if heights[index] > 0 and widths[index] > 0:
                found.add("size_mismatch", index, f"image {_describe_image(image)}: json says "
                                                  f"{image.get('height')}x{image.get('width')}, file is "
                                                  f"{height}x{width} (height x width)")
    return file_sizes


def box_array(annotations) -> tuple:
    """``(boxes, well_formed)``: an (N, 4) float array of XYWH boxes (NaN where malformed)."""
    raw = [a.get("bbox") for a in annotations]
    try:
        boxes = np.array(raw, dtype=np.float64)
        if boxes.shape != (len(raw), 4):
            raise ValueError("ragged")
    except (TypeError, ValueError):
        boxes = np.full((len(raw), 4), np.nan)
        for index, box in enumerate(raw):
            if isinstance(box, (list, tuple)) and len(box) == 4 and \
                    all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                boxes[index] = box
    boxes = boxes.reshape(len(raw), 4)
    return boxes, np.isfinite(boxes).all(axis=1)


def _check_boxes(annotations, image_of, heights, widths, found):
    """Malformed, empty and outside boxes, checked on all annotations at once with numpy."""
    def described(index, where=""):
        return lambda: f"annotation id {annotations[index].get('id')!r}: bbox {annotations[index].get('bbox')!r}{where}"

    boxes, well_formed = box_array(annotations)
    for index in np.flatnonzero(~well_formed):
        found.add("malformed_box", index, described(index))
    x, y, w, h = boxes.T
    empty = well_formed & ~((w > 0) & (h > 0))
    for index in np.flatnonzero(empty):
        found.add("empty_box", index, described(index))
    known = image_of >= 0
    image_height = np.where(known, heights[np.where(known, image_of, 0)] if len(heights) else np.nan, np.nan)
    image_width = np.where(known, widths[np.where(known, image_of, 0)] if len(widths) else np.nan, np.nan)
    with np.errstate(invalid="ignore"):
        outside = well_formed & ~empty & ((x < -BOX_TOLERANCE) | (y < -BOX_TOLERANCE)
                                          | (x + w > image_width + BOX_TOLERANCE)
                                          | (y + h > image_height + BOX_TOLERANCE))
    for index in np.flatnonzero(outside):
        found.add("box_outside_image", index,
                  described(index, f" in a {image_width[index]:g}x{image_height[index]:g} image (w x h)"))


def _check_segmentations(annotations, found) -> tuple:
    """Return (has a mask, has polygons) per annotation; record bad polygons."""
    masks = np.zeros(len(annotations), bool)
    polygons = np.zeros(len(annotations), bool)
    for index, annotation in enumerate(annotations):
        segmentation = annotation.get("segmentation")
        if not segmentation:
            continue
        masks[index] = True
        if isinstance(segmentation, dict):  # RLE
            continue
        polygons[index] = True
        parts = segmentation if isinstance(segmentation, list) else [segmentation]
        odd = any(not isinstance(p, list) or len(p) % 2 for p in parts)
        short = any(isinstance(p, list) and len(p) % 2 == 0 and len(p) < 6 for p in parts)
        if odd:
            lengths = [len(p) if isinstance(p, list) else p for p in parts]
            found.add("polygon_odd_coordinates", index, f"annotation id {annotation.get('id')!r}: {lengths} coordinates")
        if short:
            found.add("polygon_too_short", index, f"annotation id {annotation.get('id')!r}: "
                                                  f"{[len(p) // 2 for p in parts if isinstance(p, list)]} points")
    return masks, polygons


# ---- fixing: a new json, the user's file untouched ---------------------------------------


@dataclass
class FixResult:
    """Where ``fix_coco`` wrote the repaired json and what it changed (``changes[action]``)."""

    json_file: Path
    changes: dict

    def table(self) -> Table:
        rows = [{"change": action, "count": count} for action, count in self.changes.items() if count]
        return Table(rows or [{"change": "nothing to change", "count": 0}], title=f"written: {self.json_file}")

    def to_frame(self):
        return self.table().to_frame()

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __str__(self) -> str:
        return str(self.table())

    __repr__ = __str__


def fix_coco(source, output_json, image_root=None, *, drop_missing_images: bool = True,
             repair_sizes: bool = True, renumber_duplicate_ids: bool = True,
             drop_unknown_categories: bool = True, drop_orphan_annotations: bool = True,
             drop_empty_boxes: bool = True, clip_boxes: bool = True, repair_polygons: bool = True,
             drop_empty_segmentations: bool = True, drop_images_without_annotations: bool = False,
             drop_unused_categories: bool = False, expect_masks: bool | None = None) -> FixResult:
    """Write a repaired copy of a COCO json to ``output_json``; the original is never changed.

    ``source`` is a ``ValidationReport`` or what ``validate_coco`` accepts (then it is
    validated first). Each option repairs the issue kinds that name it in ``ISSUE_KINDS``:
    drop (images, annotations, categories), clip (boxes to the image), repair (sizes read
    from the files, polygons without their broken parts, duplicate ids renumbered).
    ``drop_unused_categories`` changes class indices, so it is off by default. Raises
    ``D2nbError`` when ``output_json`` is the source file.
    """
    report, coco = _report_and_data(source, image_root, expect_masks)
    changes = {}
    images, drop_image = _fix_images(coco["images"], report, changes, drop_missing_images, repair_sizes,
                                     renumber_duplicate_ids)
    index_of_image = _first_positions([image.get("id") for image in images])
    image_of = np.fromiter((index_of_image.get(a.get("image_id"), -1) for a in coco["annotations"]), np.int64,
                           len(coco["annotations"]))
    annotations = list(coco["annotations"])
    keep = ~np.isin(image_of, np.flatnonzero(drop_image)) | (image_of < 0)
    changes["annotations dropped with their image"] = int((~keep).sum())
    for option, kinds, action in ((drop_orphan_annotations, ["annotation_without_image"], "no such image"),
                                  (drop_unknown_categories, ["unknown_category"], "undeclared category"),
                                  (drop_empty_boxes, ["malformed_box", "empty_box"], "empty or malformed box"),
                                  (drop_empty_segmentations and report.expect_masks, ["empty_segmentation"],
                                   "no mask")):
        if option:
            dropped = [i for kind in kinds for i in report.indices[kind]]
            keep[dropped] = False
            changes[f"annotations dropped: {action}"] = len(dropped)
    if clip_boxes:  # boxes found outside, and every box of an image whose size was just corrected
        resized = np.flatnonzero(np.isin(image_of, list(report.file_sizes))).tolist() if repair_sizes else []
        candidates = (set(report.indices["box_outside_image"]) | set(resized)) - set(report.indices["malformed_box"])
        _clip(annotations, sorted(candidates), image_of, images, keep, drop_empty_boxes, changes)
    if repair_polygons:
        _repair_polygons(annotations, report.indices["polygon_too_short"] + report.indices["polygon_odd_coordinates"],
                         keep, report.expect_masks, changes)
    if renumber_duplicate_ids and report.indices["duplicate_annotation_id"]:
        next_id = max((a["id"] for a in annotations if isinstance(a.get("id"), int)), default=0) + 1
        for offset, index in enumerate(report.indices["duplicate_annotation_id"]):
            annotations[index] = {**annotations[index], "id": next_id + offset}
        changes["annotation ids renumbered"] = len(report.indices["duplicate_annotation_id"])
    if drop_images_without_annotations:
        bare = ~drop_image & (np.bincount(image_of[keep & (image_of >= 0)], minlength=len(images)) == 0)
        drop_image |= bare
        changes["images dropped: no annotation"] = int(bare.sum())

    drop_category = np.zeros(len(coco["categories"]), bool)
    if renumber_duplicate_ids:
        _mark(drop_category, report.indices["duplicate_category_id"], changes, "categories dropped: duplicate id")
    if drop_unused_categories:
        _mark(drop_category, report.indices["unused_category"], changes, "categories dropped: unused")
    fixed = {**coco,
             "images": [image for image, drop in zip(images, drop_image) if not drop],
             "annotations": [a for a, kept in zip(annotations, keep) if kept],
             "categories": [c for c, drop in zip(coco["categories"], drop_category) if not drop]}
    if not fixed["categories"]:
        raise D2nbError(f"fixing {report.json_file!r} would leave no category", "keep drop_unused_categories=False")
    path = write_coco_json(fixed, output_json, source_json=report.json_file)
    return FixResult(path, changes)


def _report_and_data(source, image_root, expect_masks) -> tuple:
    """The report to act on (made now, or again when the file changed since) and the data."""
    if not isinstance(source, ValidationReport):
        report = validate_coco(source, image_root, expect_masks=expect_masks)
        return report, (source if isinstance(source, dict) else open_coco(report.json_file).coco)
    if source.json_file is None:
        raise D2nbError("this report was made from an in-memory dict, which fix_coco cannot re-read",
                        "pass the dict itself (or a json path) to fix_coco")
    report = source
    if Path(report.json_file).stat().st_mtime_ns != report.json_mtime_ns:
        report = validate_coco(report.json_file, report.image_root, expect_masks=report.expect_masks,
                               check_images=report.images_checked)
    return report, open_coco(report.json_file).coco


def _fix_images(images, report, changes, drop_missing_images, repair_sizes, renumber_duplicate_ids) -> tuple:
    """A copy of the image list (sizes repaired) and which images to drop."""
    images = list(images)
    drop_image = np.zeros(len(images), bool)
    if drop_missing_images:
        _mark(drop_image, report.indices["missing_image"] + report.indices["unreadable_image"],
              changes, "images dropped: file missing or unreadable")
    if renumber_duplicate_ids:
        _mark(drop_image, report.indices["duplicate_image_id"], changes, "images dropped: duplicate id")
    if repair_sizes:
        for index, (height, width) in report.file_sizes.items():
            images[index] = {**images[index], "height": height, "width": width}
        changes["image sizes set from the files"] = len(report.file_sizes)
    return images, drop_image


fix = fix_coco  # the short name, for ``validate.fix(report, "fixed.json")``


def _mark(flags: np.ndarray, indices, changes: dict, action: str):
    indices = list(indices)
    flags[indices] = True
    if action:
        changes[action] = changes.get(action, 0) + len(indices)


def _clip(annotations, indices, image_of, images, keep, drop_empty_boxes, changes):
    clipped = emptied = 0
    for index in indices:
        image = images[image_of[index]] if image_of[index] >= 0 else {}
        if not keep[index] or not (_is_number(image.get("height")) and _is_number(image.get("width"))):
            continue
        original = [float(v) for v in annotations[index]["bbox"]]
        box = _clipped(original, float(image["width"]), float(image["height"]))
        if box == original:
            continue
        annotation = {**annotations[index], "bbox": box}
        if not annotation.get("segmentation"):
            annotation["area"] = box[2] * box[3]  # a box-only area follows its box
        annotations[index] = annotation
        clipped += 1
        if drop_empty_boxes and not (box[2] > 0 and box[3] > 0):
            keep[index] = False
            emptied += 1
    changes["boxes clipped to the image"] = clipped
    changes["annotations dropped: box empty after clipping"] = emptied


def _clipped(box: list, width: float, height: float) -> list:
    """An XYWH box cut to the image; only the sides that cross the border move, so a side
    inside the image keeps its exact value."""
    x, y, w, h = box
    if x < 0:
        x, w = 0.0, w + x
    if y < 0:
        y, h = 0.0, h + y
    x, y = min(x, width), min(y, height)
    if x + w > width:
        w = width - x
    if y + h > height:
        h = height - y
    return [x, y, max(w, 0.0), max(h, 0.0)]


def _repair_polygons(annotations, indices, keep, masks_expected, changes):
    repaired = dropped = 0
    for index in sorted(set(indices)):
        if not keep[index]:
            continue
        parts = annotations[index]["segmentation"]
        parts = parts if isinstance(parts, list) else [parts]
        valid = [p for p in parts if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
        annotations[index] = {**annotations[index], "segmentation": valid}
        repaired += 1
        if not valid and masks_expected:
            keep[index] = False
            dropped += 1
    changes["polygons repaired (broken parts removed)"] = repaired
    changes["annotations dropped: no valid polygon left"] = dropped
