"""Registering datasets with detectron2, safely re-runnable from notebook cells.

detectron2 refuses to register a name twice ("already registered"), which breaks every
notebook cell that is run a second time. Here, registering the same name with the same
files is a no-op and registering it with other files replaces the old entry.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from d2nb.errors import D2nbError

ROBOFLOW_SPLITS = ("train", "valid", "test")
ID_MAPPING_WARNING = "Category ids in annotations are not in [1, #categories]"


class _QuietIdMapping(logging.Filter):
    """detectron2 warns, in red and on every load, that it maps category ids to class
    indices; d2nb says how they map once, in the dataset's description."""

    def filter(self, record) -> bool:
        return ID_MAPPING_WARNING not in record.getMessage()


logging.getLogger("detectron2.data.datasets.coco").addFilter(_QuietIdMapping())
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
        raise D2nbError(f"{path!r} declares no categories (its 'categories' list is empty)",
                        "add one {'id': 1, 'name': 'your class'} entry per class to 'categories'")
    return coco


@dataclass
class CocoSource:
    """A COCO dataset in memory with where it came from (``json_file`` None for a dict)."""

    coco: dict
    json_file: Path | None
    image_root: Path | None


def open_coco(source, image_root=None) -> CocoSource:
    """Read what a user names as a COCO dataset: a json path, a loaded dict, or a name
    registered from a COCO json (``register_coco_json``, detectron2's builtin COCO names).

    ``image_root`` defaults to the registered one, else the json's folder. The dict is
    shared with other readers of the same file: treat it as read-only. Raises ``D2nbError``
    for a name that is not registered or not backed by a COCO json (VOC, Cityscapes).
    """
    if isinstance(source, dict):
        check_coco_dict(source)
        return CocoSource(source, None, Path(image_root) if image_root else None)
    text = str(source)
    if text.endswith(".json") or Path(text).is_file():
        json_file = Path(text)
        coco = read_coco_json(json_file)
        return CocoSource(coco, json_file, Path(image_root) if image_root else json_file.parent)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if text not in DatasetCatalog.list():
        raise D2nbError(f"{text!r} is neither a COCO json file nor a registered dataset name",
                        "pass the path of a COCO json, or a name from DatasetCatalog.list()")
    meta = MetadataCatalog.get(text)
    json_file = getattr(meta, "json_file", None)
    if not json_file:
        raise D2nbError(f"dataset {text!r} is registered, but not from a COCO json file",
                        "pass the COCO json and its image folder instead")
    root = image_root or getattr(meta, "image_root", None) or Path(json_file).parent
    return CocoSource(read_coco_json(json_file), Path(json_file), Path(root))


def check_coco_dict(coco) -> dict:
    """Check that an in-memory dict has COCO's three lists; return it."""
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise D2nbError(f"the dict passed as a COCO dataset has no {', '.join(missing)}",
                        "pass a dict with 'images', 'annotations' and 'categories' lists, or a json path")
    return coco


def write_coco_json(coco: dict, output_json, source_json=None) -> Path:
    """Write ``coco`` to ``output_json`` atomically (a temporary file renamed at the end).

    Refuses, with a ``D2nbError``, to write over ``source_json``: d2nb never changes the
    file a user's annotations came from. Returns the written path.
    """
    output = Path(output_json)
    if source_json is not None and output.resolve() == Path(source_json).resolve():
        raise D2nbError(f"the output {str(output)!r} is the annotation file it is made from",
                        "pass another output path; d2nb writes a new json and leaves yours as it is")
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(coco))  # one C call: several times faster than json.dump
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a dataset file is for everyone
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output


def class_names(coco: dict) -> list:
    """Class names in detectron2's contiguous order (categories sorted by id)."""
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def has_masks(coco: dict) -> bool:
    """True when at least one annotation carries a non-empty segmentation."""
    return any(a.get("segmentation") for a in coco["annotations"])


def register_coco_json(name: str, json_file, image_root=None) -> str:
    """Register a COCO instances json under ``name``; return the name.

    ``image_root`` defaults to the json's folder. Running this again with the same files
    does nothing; with other files (or the same file now declaring other categories) it
    replaces the registration. The class names are in ``MetadataCatalog.get(name).thing_classes``
    straight away, before the data is loaded. Every declared category is a class, a
    Roboflow export's unused placeholder (id 0) included, so that class indices match the
    json's category order; annotations with an empty ``segmentation`` list load as boxes.
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
        same_files = (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root)
        if same_files and list(getattr(meta, "thing_classes", None) or []) == class_names(coco):
            return name
        previous = getattr(meta, "json_file", None)
        logging.getLogger("d2nb.data").warning(
            "dataset %r is registered again, now from %r (before: %s); the new registration replaces the old",
            name, json_file, "the same file, with other categories" if same_files
            else repr(previous) if previous else "not from a json file")
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
