"""The embedded default dataset: coloured shapes with polygon masks, made on the spot.

``make_synthetic_dataset()`` writes a standard COCO instances json and PNG images for a
train and a val split. ``make_large_dataset()`` writes pictures of the same classes at
2048 x 2048 with many small shapes (10-40 px): what whole-picture inference at the model's
size loses and tiled inference (``d2nb.predict``'s ``tile``) finds. The same arguments always give the same bytes (every image draws
from its own seeded generator), so a dataset made once is reused from disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

from d2nb import colab

CLASS_NAMES = ("circle", "triangle", "square", "star")
# Each class has its own hue family (OpenCV hue, 0-180): shape and colour both tell the class,
# which lets a small model trained from scratch on two CPU cores learn it in minutes.
CLASS_HUES = (0, 60, 110, 28)
SPLITS = ("train", "val")
_MAX_HIDDEN_FRACTION = 0.25 # a new shape may hide at most this much of an earlier one
GENERATOR_VERSION = 5  # part of the folder name: a changed generator never reuses old files


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. The defaults are the embedded default dataset."""

    # 1600, not 200: the CPU recipe over-fitted 200 pictures (bbox/mask AP 78.0/80.1 after 1600
    # steps; 80.6/81.6 after 1400 on 1600 pictures, benchmarks/results/NOTES.md, 2026-12-07).
    # Each picture's pixels depend only on (seed, split, index): the first 200 and the val split
    # are the same pictures as before. Written in about 5 s on 2 cores, once.
    num_train: int = 1600
    num_val: int = 50
    height: int = 128
    width: int = 128
    max_shapes: int = 5
    seed: int = 0

    @property
    def folder_name(self) -> str:
        return (f"d2nb_synthetic_v{GENERATOR_VERSION}_{self.height}x{self.width}_{self.num_train}+{self.num_val}"
                f"_max{self.max_shapes}_seed{self.seed}")


@dataclass(frozen=True)
class LargeSpec:
    """Large pictures with many small shapes, the default classes and colours, no overlaps."""

    num_images: int = 4
    size: int = 2048
    shapes: int = 120  # per picture
    min_shape: int = 10  # pixels, the shape's nominal diameter
    max_shape: int = 40
    seed: int = 0

    @property
    def folder_name(self) -> str:
        return (f"d2nb_synthetic_large_v{GENERATOR_VERSION}_{self.size}px_{self.num_images}_{self.shapes}"
                f"x{self.min_shape}-{self.max_shape}_seed{self.seed}")


def default_datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` (detectron2's own variable), else ``./datasets``; in Colab with
    the working folder on Google Drive, ``/content/datasets``: datasets stay on the local disk."""
    if os.environ.get("DETECTRON2_DATASETS"):
        return Path(os.environ["DETECTRON2_DATASETS"]).expanduser()
    return colab.LOCAL_DATASETS if colab.on_drive("datasets") else Path("datasets")


def make_synthetic_dataset(spec: SyntheticSpec = SyntheticSpec(), root=None) -> dict:
    """Write (or reuse) the synthetic dataset under ``root``; return its split files.

    Returns ``{"train": (json_path, image_dir), "val": (json_path, image_dir)}``.
    The folder is written under a temporary name and renamed when complete, so an
    interrupted run never leaves a half-written dataset that a later run would trust.
    """
    folder = _written_once(spec, root, lambda staging: [
        _write_split(staging, split, index, spec.num_train if split == "train" else spec.num_val, spec)
        for index, split in enumerate(SPLITS)])
    return {s: (str(folder / f"{s}.json"), str(folder / s)) for s in SPLITS}


def make_large_dataset(spec: LargeSpec = LargeSpec(), root=None) -> tuple:
    """Write (or reuse) the large-picture split; return ``(json_path, image_dir)``. Written
    under a temporary name and renamed when complete, as ``make_synthetic_dataset``."""
    folder = _written_once(spec, root, lambda staging: _write_split(staging, "large", 2, spec.num_images, spec))
    return str(folder / "large.json"), str(folder / "large")


def _written_once(spec, root, write) -> Path:
    """The folder of ``spec`` under ``root``: reused when complete (it holds spec.json), else
    written by ``write(staging folder)`` and renamed into place."""
    root = Path(root) if root is not None else default_datasets_root()
    folder = root / spec.folder_name
    if (folder / "spec.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        write(staging)
        (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
        try:
            staging.rename(folder)
        except OSError:  # another process finished the same dataset first: use theirs
            if not (folder / "spec.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_split(folder: Path, split: str, split_index: int, count: int, spec):
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    for image_index in range(count):
        rng = np.random.default_rng([spec.seed, split_index, image_index])
        if isinstance(spec, LargeSpec):
            height = width = spec.size
            image, instances = draw_sparse_scene(rng, spec.size, spec.size, spec.shapes, spec.min_shape, spec.max_shape)
        else:
            height, width = spec.height, spec.width
            image, instances = draw_scene(rng, height, width, spec.max_shapes)
        file_name = f"{image_index:05d}.png"
        cv2.imwrite(str(folder / split / file_name), image[:, :, ::-1])  # RGB -> BGR for cv2
        image_id = image_index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category_id, polygons, bbox, area in instances:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                "segmentation": polygons, "bbox": bbox, "area": area, "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES)]
    coco = {"info": {"description": f"d2nb synthetic shapes ({split})"},
            "images": images, "annotations": annotations, "categories": categories}
    (folder / f"{split}.json").write_text(json.dumps(coco))


def draw_scene(rng: np.random.Generator, height: int, width: int, max_shapes: int):
    """Draw one image; return (RGB uint8 image, [(category_id, polygons, bbox, area)]).

    Every shape is painted on exactly the pixels that COCO's own rasterisation (pycocotools,
    which evaluation uses) makes of its annotation, so the picture and the ground truth agree
    to the pixel: a model is scored on what it can see, not on how two rasterisers differ.
    """
    image = _background(rng, height, width)
    placed = []  # (category_id, polygon, full mask)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(10):
            category_index = int(rng.integers(len(CLASS_NAMES)))
            polygon = _clip(_shape_polygon(rng, CLASS_NAMES[category_index], height, width), height, width)
            mask = _raster([polygon.ravel().tolist()], height, width)
            if mask.sum() < 12:
                continue
            if all((m & mask).sum() <= _MAX_HIDDEN_FRACTION * m.sum() for _, _, m in placed) \
                    and not _leaves_a_hole(placed, mask):
                break
        else:
            continue
        colour = _contrasting_colour(rng, image, mask, CLASS_HUES[category_index])
        image[mask.astype(bool)] = colour
        placed.append((category_index + 1, polygon, mask))
    return image, _visible_instances(placed)


def draw_sparse_scene(rng: np.random.Generator, height: int, width: int, count: int, min_size: int, max_size: int):
    """Up to ``count`` shapes of ``min_size``-``max_size`` pixels that do not touch, each
    inside its own cell of a grid over the picture (cells drawn at random), on the default
    backgrounds; return what ``draw_scene`` returns."""
    image = _background(rng, height, width)
    cell = int(np.ceil(max_size * 1.3)) + 2  # the largest shape reaches 0.6 x its size from its centre
    rows, columns = height // cell, width // cell
    chosen = rng.choice(rows * columns, size=min(count, rows * columns), replace=False)
    instances = []
    for index in sorted(int(i) for i in chosen):
        top, left = (index // columns) * cell, (index % columns) * cell
        category_index = int(rng.integers(len(CLASS_NAMES)))
        size = rng.uniform(min_size, max_size)
        reach = 0.6 * size + 1
        centre = rng.uniform(reach, cell - reach, 2)
        local = _clip(_shape_polygon(rng, CLASS_NAMES[category_index], cell, cell, size, centre), cell, cell)
        mask = _raster([local.ravel().tolist()], cell, cell)
        if mask.sum() < 12:
            continue
        window = image[top:top + cell, left:left + cell]
        window[mask.astype(bool)] = _contrasting_colour(rng, window, mask, CLASS_HUES[category_index])
        ys, xs = np.nonzero(mask)
        polygon = (local + [left, top]).round(2)
        bbox = [float(left + xs.min()), float(top + ys.min()), float(xs.max() + 1 - xs.min()),
                float(ys.max() + 1 - ys.min())]
        instances.append((category_index + 1, [polygon.ravel().tolist()], bbox, float(mask.sum())))
    return image, instances


def _visible_instances(placed):
    instances = []
    for index, (category_id, polygon, mask) in enumerate(placed):
        visible = _visible(mask, [later for _, _, later in placed[index + 1:]])
        if visible.sum() == mask.sum():
            polygons = [polygon.ravel().tolist()]
        else:  # partly hidden: the annotation is the visible region, as COCO annotates it
            polygons = _outline_polygons(visible)
            if not polygons:
                continue
        ys, xs = np.nonzero(visible)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
        instances.append((category_id, polygons, bbox, float(visible.sum())))
    return instances


def _visible(mask: np.ndarray, later: list) -> np.ndarray:
    visible = mask.copy()
    for other in later:
        visible &= 1 - other
    return visible


def _raster(polygons: list, height: int, width: int) -> np.ndarray:
    """The uint8 0/1 mask pycocotools makes of COCO ``polygons`` (what COCOeval compares)."""
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width)))


def _clip(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    clipped = polygon.copy()
    clipped[:, 0] = clipped[:, 0].clip(0, width)
    clipped[:, 1] = clipped[:, 1].clip(0, height)
    return clipped.round(2)


def _outline_polygons(mask: np.ndarray) -> list:
    """COCO polygons whose rasterisation is ``mask``: its outer contours traced on the mask
    doubled in size, so that they run a quarter pixel inside the region's pixel edges (every
    region pixel's centre inside them, every other pixel's centre outside)."""
    doubled = np.kron(mask, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [((c.reshape(-1, 2) + 0.5) / 2).round(2).ravel().tolist() for c in contours if len(c) >= 3]


def _leaves_a_hole(placed, new: np.ndarray) -> bool:
    """Whether painting ``new`` would leave a hole in the visible region of a shape already
    placed, which COCO polygons cannot represent; such a shape is drawn again elsewhere."""
    for index, (_, _, earlier) in enumerate(placed):
        if not (earlier & new).any():
            continue
        visible = _visible(earlier, [m for _, _, m in placed[index + 1:]] + [new])
        _, hierarchy = cv2.findContours(visible, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
            return True
    return False


def _shape_polygon(rng, name: str, height: int, width: int, size: float | None = None,
                   centre: np.ndarray | None = None) -> np.ndarray:
    size = rng.uniform(0.25, 0.6) * min(height, width) if size is None else size
    if centre is None:
        centre = rng.uniform([size * 0.3, size * 0.3], [width - size * 0.3, height - size * 0.3])
    angle = rng.uniform(0, 2 * np.pi)
    if name == "circle":
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full(32, size / 2)
    elif name == "triangle":
        theta = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        radii = np.full(3, size / 2 * 1.15)
    elif name == "square":
        theta = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        radii = np.full(4, size / 2 * 1.2)
    elif name == "star":
        theta = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, size / 2 * 1.2, size / 2 * 0.5)
    else:
        raise ValueError(f"unknown synthetic shape {name!r}; known: {CLASS_NAMES}")
    theta = theta + angle
    return np.stack([centre[0] + radii * np.cos(theta), centre[1] + radii * np.sin(theta)], axis=1)


def _background(rng, height: int, width: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, 3)
    if kind == 0:  # flat colour
        return np.broadcast_to(base.astype(np.uint8), (height, width, 3)).copy()
    if kind == 1:  # linear gradient between two colours
        other = rng.integers(0, 256, 3)
        direction = rng.normal(size=2)
        ys, xs = np.mgrid[0:height, 0:width]
        t = xs * direction[0] + ys * direction[1]
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        return (base + (other - base) * t[..., None]).astype(np.uint8)
    noise = rng.normal(0, 30, (height // 16 + 2, width // 16 + 2, 3))  # smooth mottled texture
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _contrasting_colour(rng, image: np.ndarray, mask: np.ndarray, hue: int):
    """A colour of the class's hue family (saturation and brightness vary) that stands out
    from what lies under the shape."""
    under = image[mask.astype(bool)].mean(axis=0)
    for _ in range(20):
        hsv = np.array([[[(hue + rng.integers(-12, 13)) % 180, rng.integers(110, 256), rng.integers(110, 256)]]],
                       dtype=np.uint8)
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(int)
        if np.abs(colour - under).sum() > 150:
            break
    return tuple(int(c) for c in colour)
