"""Smaller COCO files: the first or a random N images, and train/val splits of one file.

    make_subset("instances_val2017.json", "instances_val2017_100.json", 100)
    make_builtin_subset("coco_2017_val", 100)          # -> "coco_2017_val_100", registered
    make_builtin_subset("keypoints_coco_2017_val", 100)
    split_train_val("all.json", "train.json", "val.json", val_fraction=0.2, seed=0)

Ids are kept as they are (an image keeps its id, an annotation its id), annotations follow
their image, and every category is kept, so class indices match the full dataset's.
detectron2's builtin names ``coco_2017_val_100`` and ``keypoints_coco_2017_val_100`` read
``coco/annotations/{instances,person_keypoints}_val2017_100.json``: ``make_builtin_subset``
writes exactly those files under ``$DETECTRON2_DATASETS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from d2nb.data.register import open_coco, write_coco_json
from d2nb.data.synthetic import default_datasets_root
from d2nb.errors import D2nbError

SELECTIONS = ("first", "random")


def choose_images(num_available: int, num_images: int, selection: str = "first", seed: int = 0) -> np.ndarray:
    """Positions (sorted) of the images to keep: the first ``num_images``, or a seeded random
    choice of them. Raises ``D2nbError`` for a count below 1 or an unknown selection."""
    if selection not in SELECTIONS:
        raise D2nbError(f"selection {selection!r} is not one of {SELECTIONS}",
                        "pass selection='first' or selection='random' (with seed=)")
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise D2nbError(f"num_images={num_images!r} is not a positive whole number",
                        "pass how many images the subset keeps, e.g. 100")
    count = min(int(num_images), num_available)
    if selection == "first":
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(num_available, size=count, replace=False))


def subset_coco(coco: dict, image_positions) -> dict:
    """A COCO dict with only the images at ``image_positions`` and their annotations;
    categories and the other top-level keys (info, licenses) are kept as they are."""
    images = coco["images"]
    kept = [images[int(i)] for i in image_positions]
    kept_ids = {image["id"] for image in kept}
    annotations = [a for a in coco["annotations"] if a.get("image_id") in kept_ids]
    return {**coco, "images": kept, "annotations": annotations}


def make_subset(source, output_json, num_images: int, selection: str = "first", seed: int = 0) -> Path:
    """Write a COCO json holding ``num_images`` images of ``source`` (a json path, dict or
    registered name) and their annotations. Returns the written path; never overwrites the
    source (``D2nbError``)."""
    dataset = open_coco(source)
    positions = choose_images(len(dataset.coco["images"]), num_images, selection, seed)
    return write_coco_json(subset_coco(dataset.coco, positions), output_json, source_json=dataset.json_file)


def split_train_val(source, train_json, val_json, val_fraction: float = 0.2, seed: int = 0) -> tuple:
    """Split one COCO file's images at random into two new files; return their paths.

    ``val_fraction`` of the images (at least one, and at least one left for training) go to
    ``val_json``. Same arguments, same split. Raises ``D2nbError`` for a fraction outside
    (0, 1) or a file with fewer than 2 images.
    """
    if not 0 < val_fraction < 1:
        raise D2nbError(f"val_fraction={val_fraction!r} is not between 0 and 1",
                        "pass the share of images that go to validation, e.g. 0.2")
    dataset = open_coco(source)
    count = len(dataset.coco["images"])
    if count < 2:
        raise D2nbError(f"{dataset.json_file or 'the dataset'} has {count} image(s): too few to split",
                        "split a file with at least 2 images")
    num_val = min(max(1, round(count * val_fraction)), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    val_positions, train_positions = np.sort(order[:num_val]), np.sort(order[num_val:])
    train = write_coco_json(subset_coco(dataset.coco, train_positions), train_json, source_json=dataset.json_file)
    val = write_coco_json(subset_coco(dataset.coco, val_positions), val_json, source_json=dataset.json_file)
    return train, val


def builtin_coco_splits() -> dict:
    """``{name: (image folder, json file)}`` relative to ``$DETECTRON2_DATASETS``, and the
    metadata family, for detectron2's builtin COCO instance and keypoint datasets."""
    from detectron2.data.datasets import builtin

    return {name: (image_root, json_file, family)
            for family, splits in builtin._PREDEFINED_SPLITS_COCO.items()
            for name, (image_root, json_file) in splits.items()}


def make_builtin_subset(dataset: str = "coco_2017_val", num_images: int = 100, root=None,
                        selection: str = "first", seed: int = 0) -> str:
    """Write ``<json stem>_<N>.json`` next to a builtin COCO dataset's json and register it
    as ``<dataset>_<N>`` with the builtin metadata (keypoint names included); return the name.

    For 100 images these are detectron2's own ``coco_2017_val_100`` /
    ``keypoints_coco_2017_val_100`` files. ``root`` defaults to ``$DETECTRON2_DATASETS``.
    Raises ``D2nbError`` for an unknown name or a missing source json.
    """
    splits = builtin_coco_splits()
    if dataset not in splits:
        known = ", ".join(n for n in splits if not n.endswith("_100"))
        raise D2nbError(f"{dataset!r} is not one of detectron2's builtin COCO datasets",
                        f"pass one of: {known}")
    root = Path(root) if root is not None else default_datasets_root()
    image_folder, json_file, family = splits[dataset]
    source = root / json_file
    if not source.is_file():
        raise D2nbError(f"{str(source)!r} (the annotations of {dataset}) does not exist",
                        "download it first: python -m d2nb data download annotations "
                        "(or set DETECTRON2_DATASETS to the folder holding coco/)")
    output = source.with_name(f"{source.stem}_{num_images}.json")
    make_subset(source, output, num_images, selection, seed)
    name = f"{dataset}_{num_images}"
    register_builtin_coco(name, output, root / image_folder, family)
    return name


def register_builtin_coco(name: str, json_file, image_root, family: str = "coco") -> str:
    """Register (or re-register, when its files changed) a COCO json under a builtin-style
    name with detectron2's builtin metadata for ``family`` ("coco" or "coco_person")."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    json_file, image_root = str(Path(json_file).resolve()), str(Path(image_root).resolve())
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root):
            return name
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, _get_builtin_metadata(family), json_file, image_root)
    return name
