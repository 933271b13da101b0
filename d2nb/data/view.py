"""Looking at a COCO dataset's ground truth: images with their boxes, masks and labels.

    images = AnnotatedImages("train.json")             # or a dict, or a registered name
    positions = images.positions(category_ids=[2])     # images holding class 2
    picture = images.draw(positions[0])                # RGB uint8, annotations drawn

This is the logic behind ``d2nb.widgets.browser.DatasetBrowser``; colours are per class,
the same as ``d2nb.draw`` gives predictions of that class. A missing or unreadable image is
drawn as a grey placeholder naming the file, so a broken dataset can still be browsed.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from d2nb.data.register import open_coco
from d2nb.draw import class_colour

MASK_ALPHA = 0.4
MAX_SIDE = 800
MIN_SIDE = 384  # smaller pictures are enlarged (pixels kept sharp) so that labels stay readable


class AnnotatedImages:
    """A COCO dataset as a sequence of images, each with its annotations."""

    def __init__(self, source, image_root=None):
        dataset = open_coco(source, image_root)
        self.coco = dataset.coco
        self.json_file = dataset.json_file
        self.image_root = Path(dataset.image_root) if dataset.image_root else Path(".")
        self.images = self.coco["images"]
        categories = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.class_names = {c["id"]: c.get("name", str(c["id"])) for c in categories}
        self._colour_index = {c["id"]: index for index, c in enumerate(categories)}  # detectron2's class index
        self._annotations = {}
        for annotation in self.coco["annotations"]:
            self._annotations.setdefault(annotation.get("image_id"), []).append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def positions(self, category_ids=None) -> list:
        """Positions of the images that hold at least one of ``category_ids`` (all when empty)."""
        if not category_ids:
            return list(range(len(self.images)))
        wanted = set(category_ids)
        return [index for index, image in enumerate(self.images)
                if any(a.get("category_id") in wanted for a in self._annotations.get(image.get("id"), ()))]

    def annotations(self, position: int, category_ids=None) -> list:
        """The annotations of the image at ``position`` (only ``category_ids`` when given)."""
        found = self._annotations.get(self.images[position].get("id"), [])
        return [a for a in found if not category_ids or a.get("category_id") in set(category_ids)]

    def path(self, position: int) -> Path:
        return self.image_root / str(self.images[position].get("file_name", ""))

    def draw(self, position: int, category_ids=None, masks: bool = True, boxes: bool = True,
             labels: bool = True, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE) -> np.ndarray:
        """The image at ``position`` with its annotations, resized so that its longer side
        is at most ``max_side`` (and enlarged by a whole factor when below ``min_side``)."""
        image = self.images[position]
        picture = load_picture(self.path(position), image.get("height"), image.get("width"))
        longest = max(picture.shape[:2])
        scale = max_side / longest if longest > max_side else float(max(1, min_side // longest))
        if scale != 1:
            picture = cv2.resize(picture, (round(picture.shape[1] * scale), round(picture.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
        return draw_annotations(picture, self.annotations(position, category_ids), self.class_names,
                                self._colour_index, scale, masks, boxes, labels)

    def caption(self, position: int, category_ids=None) -> str:
        image = self.images[position]
        shown = self.annotations(position, category_ids)
        counts = {}
        for annotation in shown:
            name = self.class_names.get(annotation.get("category_id"), f"id {annotation.get('category_id')}")
            counts[name] = counts.get(name, 0) + 1
        listed = ", ".join(f"{n} × {name}" for name, n in sorted(counts.items())) or "no annotations"
        return f"{image.get('file_name')} (id {image.get('id')}, {image.get('width')}×{image.get('height')}): {listed}"


def load_picture(path: Path, height=None, width=None) -> np.ndarray:
    """RGB uint8 with EXIF rotation applied, as detectron2 reads it; a grey placeholder of
    the json's size naming the file when it cannot be read."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    except (OSError, ValueError):
        picture = np.full((int(height or 240), int(width or 320), 3), 96, np.uint8)
        cv2.putText(picture, f"cannot read {Path(path).name}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        return picture


def draw_annotations(picture: np.ndarray, annotations: list, class_names: dict, colour_index: dict,
                     scale: float = 1.0, masks: bool = True, boxes: bool = True, labels: bool = True) -> np.ndarray:
    """Draw COCO annotations (XYWH boxes, polygon or RLE masks) on a copy of ``picture``,
    whose coordinates are the annotations' times ``scale``."""
    canvas = picture.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    if masks:
        overlay, covered = canvas.copy(), np.zeros((height, width), bool)
        for annotation in annotations:
            mask = annotation_mask(annotation, height, width, scale)
            if mask is not None:
                overlay[mask] = _colour(annotation, colour_index)
                covered |= mask
        canvas[covered] = (canvas[covered] * (1 - MASK_ALPHA) + overlay[covered] * MASK_ALPHA).astype(np.uint8)
    for annotation in annotations:
        box = annotation.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4):
            continue
        x, y, w, h = (float(v) * scale for v in box)
        colour = _colour(annotation, colour_index)
        if boxes:
            cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), colour, thickness)
        if labels:
            text = class_names.get(annotation.get("category_id"), f"id {annotation.get('category_id')}")
            (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            top = max(round(y) - text_height - 4, 0)
            cv2.rectangle(canvas, (round(x), top), (round(x) + text_width + 4, top + text_height + 4), colour, -1)
            cv2.putText(canvas, text, (round(x) + 2, top + text_height + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def annotation_mask(annotation: dict, height: int, width: int, scale: float = 1.0):
    """A boolean (height, width) mask of an annotation's segmentation, or None without one.
    Broken polygons (fewer than 3 points, odd coordinates) are left out."""
    segmentation = annotation.get("segmentation")
    if not segmentation:
        return None
    if isinstance(segmentation, dict):
        from pycocotools import mask as mask_utils

        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        mask = mask_utils.decode(rle).astype(np.uint8)
        return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    polygons = [np.asarray(p, np.float64).reshape(-1, 2) * scale for p in segmentation
                if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
        return None
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(p * 8).astype(np.int32) for p in polygons], 1, shift=3)
    return mask.astype(bool)


def _colour(annotation: dict, colour_index: dict) -> tuple:
    return class_colour(colour_index.get(annotation.get("category_id"), len(colour_index)))
