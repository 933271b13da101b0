"""Registering datasets with detectron2, safely re-runnable from notebook cells.

detectron2 refuses to register a name twice ("already registered"), which breaks every
notebook cell that is run a second time. Here, registering the same name with the same
files is a no-op and registering it with other files replaces the old entry.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from d2nb.errors import D2nbError

ROBOFLOW_SPLITS = ("train", "valid", "test")
ROBOFLOW_JSON = "_annotations.coco.json"


def read_coco_json(json_file) -> dict:
    """Load a COCO json, with a clear error for a missing file or a file that is not COCO."""
    path = Path(json_file)
    if not path.is_file():
        raise D2nbError(f"COCO annotation file {str(path)!r} does not exist",
                        "check the path; relative paths are read from the notebook's folder")
    return _read_coco_cached(str(path.resolve()), path.stat().st_mtime_ns)


@lru_cache(maxsize=16)
def _read_coco_cached(path: str, _mtime_ns: int) -> dict:
    try:
        coco = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise D2nbError(f"{path!r} is not valid JSON ({error})",
                        "export the annotations as COCO json") from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise D2nbError(f"{path!r} is not a COCO instances file: it has no {', '.join(missing)}",
                        "export the annotations in COCO format (images, annotations, categories)")
    if not coco["categories"]:
        raise D2nbError(f"{path!r} declares no categories", "add the 'categories' list")
    return coco


def class_names(coco: dict) -> list:
    """Class names in detectron2's contiguous order (categories sorted by id)."""
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def has_masks(coco: dict) -> bool:
    """True when at least one annotation carries a non-empty segmentation."""
    return any(a.get("segmentation") for a in coco["annotations"])


def register_coco_json(name: str, json_file, image_root=None) -> str:
    """Register a COCO instances json under ``name``; return the name.

    ``image_root`` defaults to the json's folder. Running this again with the same files
    does nothing; with other files it replaces the registration. The class names are in
    ``MetadataCatalog.get(name).thing_classes`` straight away, before the data is loaded.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_file = str(Path(json_file).resolve())
    image_root = str(Path(image_root).resolve()) if image_root else str(Path(json_file).parent)
    coco = read_coco_json(json_file)
    if not Path(image_root).is_dir():
        raise D2nbError(f"image folder {image_root!r} for {json_file!r} does not exist",
                        "pass image_root= the folder holding the images named in the json")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root):
            return name
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    MetadataCatalog.get(name).set(
        thing_classes=class_names(coco),
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
    )
    return name


def find_roboflow_splits(folder) -> dict:
    """``{split: json_path}`` for a folder exported as train/valid/test COCO splits."""
    folder = Path(folder)
    splits = {}
    for split in ROBOFLOW_SPLITS:
        jsons = sorted((folder / split).glob("*.json")) if (folder / split).is_dir() else []
        preferred = [p for p in jsons if p.name == ROBOFLOW_JSON]
        if preferred or jsons:
            splits[split] = (preferred or jsons)[0]
    return splits


def register_roboflow_folder(folder, name: str | None = None) -> dict:
    """Register every split of a Roboflow-style COCO export; return ``{split: name}``.

    Names are ``<name>_train``, ``<name>_valid``, ``<name>_test`` (``name`` defaults to the
    folder's name). Images are read from each split's own folder, as the export lays them.
    """
    folder = Path(folder)
    splits = find_roboflow_splits(folder)
    if "train" not in splits:
        raise D2nbError(f"{str(folder)!r} has no train/ folder with a COCO json",
                        "pass a folder laid out as train/, valid/ (and test/), each holding "
                        f"{ROBOFLOW_JSON} and its images, or pass the json file itself")
    name = name or folder.resolve().name
    return {split: register_coco_json(f"{name}_{split}", path, path.parent)
            for split, path in splits.items()}
