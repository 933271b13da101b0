"""Datasets: the synthetic default, registration, and turning a user's choice into names.

``resolve_dataset()`` is what the training and evaluation notebooks call with their
``dataset`` parameter. It accepts, in this order:

- ``"synthetic"``: the embedded default dataset (generated on first use, no download);
- a name already in detectron2's ``DatasetCatalog`` (builtin ones such as
  ``coco_2017_train`` read ``$DETECTRON2_DATASETS``, default ``./datasets``);
- a path to a COCO json (images in ``image_root``, default the json's folder);
- a folder exported as train/valid/test splits, each holding a COCO json (Roboflow's layout),
  or a YOLO, Pascal VOC or labelme folder (converted to COCO, see ``d2nb.data.formats``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from d2nb.data.register import (
    class_names, find_roboflow_splits, has_masks, read_coco_json, register_coco_json,
    register_roboflow_folder,
)
from d2nb.data.prepare import PreparedDataset, prepare_dataset, validate_splits, write_split_report
from d2nb.data.synthetic import (CLASS_NAMES, LargeSpec, SyntheticSpec, default_datasets_root, make_large_dataset,
                                 make_synthetic_dataset)
from d2nb.errors import D2nbError

SYNTHETIC = "synthetic"
SYNTHETIC_TRAIN = "d2nb_synthetic_train"
SYNTHETIC_VAL = "d2nb_synthetic_val"
SYNTHETIC_LARGE = "synthetic_large"  # 2048 px pictures with many 10-40 px shapes of the same classes
SYNTHETIC_LARGE_NAME = "d2nb_synthetic_large"

__all__ = [
    "CLASS_NAMES", "DatasetChoice", "SYNTHETIC", "SYNTHETIC_TRAIN", "SYNTHETIC_VAL", "SyntheticSpec",
    "SYNTHETIC_LARGE", "SYNTHETIC_LARGE_NAME", "LargeSpec", "make_large_dataset", "register_synthetic_large",
    "PreparedDataset", "prepare_dataset", "validate_splits", "write_split_report",
    "check_dataset_files", "class_names", "dataset_splits", "default_datasets_root", "has_masks", "make_synthetic_dataset",
    "read_coco_json", "register_coco_json", "register_roboflow_folder", "register_synthetic", "resolve_dataset",
]


@dataclass
class DatasetChoice:
    """The registered names a run trains and evaluates on, and what they hold."""

    train: str
    val: str | None
    class_names: list = field(default_factory=list)
    has_masks: bool = True
    prepared: object = None  # the PreparedDataset of a path: format, splits, notes


def register_synthetic(spec: SyntheticSpec = SyntheticSpec(), root=None) -> DatasetChoice:
    """Generate (or reuse) the synthetic dataset and register its train and val splits."""
    splits = make_synthetic_dataset(spec, root)
    register_coco_json(SYNTHETIC_TRAIN, *splits["train"])
    register_coco_json(SYNTHETIC_VAL, *splits["val"])
    return DatasetChoice(SYNTHETIC_TRAIN, SYNTHETIC_VAL, list(CLASS_NAMES), True)


def register_synthetic_large(spec: LargeSpec = LargeSpec(), root=None) -> DatasetChoice:
    """Generate (or reuse) the large-picture split and register it (for evaluation: it is
    both the "train" and the "val" of the choice)."""
    register_coco_json(SYNTHETIC_LARGE_NAME, *make_large_dataset(spec, root))
    return DatasetChoice(SYNTHETIC_LARGE_NAME, SYNTHETIC_LARGE_NAME, list(CLASS_NAMES), True)


def resolve_dataset(dataset=SYNTHETIC, val_dataset=None, image_root=None,
                    synthetic: SyntheticSpec = SyntheticSpec(), keep_placeholder: bool = False) -> DatasetChoice:
    """Register what ``dataset`` names and return the train/val names to use.

    A path is detected and converted by ``d2nb.data.prepare.prepare_dataset`` (COCO,
    Roboflow, YOLO, VOC, labelme; converted copies under ``$DETECTRON2_DATASETS``), and an
    export's placeholder category is left out of the classes unless ``keep_placeholder``.
    ``val_dataset`` may be any of the same kinds; left out, it is the synthetic val split,
    a folder's ``valid`` (else ``val``, ``test``) split, or ``<name>_val`` for a registered
    ``<name>_train``. Raises ``D2nbError`` naming the value and the accepted kinds.
    """
    from detectron2.data import DatasetCatalog

    dataset = SYNTHETIC if dataset in (None, "") else dataset
    if dataset == SYNTHETIC:
        choice = register_synthetic(synthetic)
    elif dataset == SYNTHETIC_LARGE:
        choice = register_synthetic_large()
    elif isinstance(dataset, str) and dataset in DatasetCatalog.list():
        choice = _describe(dataset, _guess_val_name(dataset))
    elif Path(str(dataset)).exists() or Path(str(dataset)).suffix == ".json":
        prepared = prepare_dataset(dataset, image_root=image_root, keep_placeholder=keep_placeholder)
        if prepared.train is None:
            raise D2nbError(
                f"dataset {str(dataset)!r} has no train split (it has {', '.join(prepared.splits)}"
                + (f"; {'; '.join(prepared.missing)}" if prepared.missing else "") + ")",
                "add the train split to the export, or pass one split's json or folder as dataset=")
        choice = DatasetChoice(prepared.train, prepared.val, prepared.class_names, prepared.has_masks, prepared)
    else:
        from difflib import get_close_matches
        close = get_close_matches(str(dataset), DatasetCatalog.list(), n=3)
        raise D2nbError(
            f"dataset {dataset!r} is neither 'synthetic', 'synthetic_large', a registered dataset name, "
            "a COCO json file, nor a folder with train/valid/test COCO splits"
            + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""),
            "pass dataset='synthetic', a name from DatasetCatalog.list(), a COCO json (with image_root= its "
            "image folder), or the folder of a Roboflow (COCO or YOLO), YOLO, Pascal VOC or labelme export")
    if val_dataset not in (None, ""):
        choice.val = resolve_dataset(val_dataset, image_root=image_root, synthetic=synthetic,
                                     keep_placeholder=keep_placeholder).train
    return choice


def dataset_splits(dataset=SYNTHETIC, output_dir=None, name=None, image_root=None,
                   keep_placeholder: bool = False, synthetic: SyntheticSpec = SyntheticSpec()) -> PreparedDataset:
    """Every split of ``dataset``, registered: what 02_dataset_prep shows and validates.

    A path goes through ``prepare_dataset`` (converted into ``output_dir``); ``"synthetic"``
    gives its train and val splits, a registered name itself and its ``_val`` sibling.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dataset = SYNTHETIC if dataset in (None, "") else dataset
    if dataset != SYNTHETIC and not (isinstance(dataset, str) and dataset in DatasetCatalog.list()):
        if not (Path(str(dataset)).exists() or Path(str(dataset)).suffix == ".json"):
            resolve_dataset(dataset)  # raises the error that lists what dataset= accepts
        return prepare_dataset(dataset, output_dir, name=name, image_root=image_root,
                               keep_placeholder=keep_placeholder)
    choice = resolve_dataset(dataset, synthetic=synthetic)
    names = {"train": choice.train, **({"val": choice.val} if choice.val else {})}
    prepared = PreparedDataset(name=str(dataset), format="synthetic" if dataset == SYNTHETIC else "registered",
                               source=str(dataset), class_names=choice.class_names, has_masks=choice.has_masks)
    for split, registered in names.items():
        meta = MetadataCatalog.get(registered)
        prepared.splits[split] = registered
        if getattr(meta, "json_file", None):
            prepared.json_files[split] = prepared.source_jsons[split] = Path(meta.json_file)
            prepared.image_roots[split] = Path(meta.image_root)
    id_map = getattr(MetadataCatalog.get(choice.train), "thing_dataset_id_to_contiguous_id", None) or {}
    prepared.category_ids = sorted(id_map, key=id_map.get) or list(range(1, len(choice.class_names) + 1))
    return prepared


def _guess_val_name(train_name: str):
    from detectron2.data import DatasetCatalog

    if train_name.endswith("_train"):
        for suffix in ("_val", "_valid", "_test"):
            candidate = train_name[: -len("_train")] + suffix
            if candidate in DatasetCatalog.list():
                return candidate
    return None


def _describe(train: str, val) -> DatasetChoice:
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(train)
    json_file = getattr(meta, "json_file", None)
    masks = True
    if json_file and Path(json_file).is_file():
        masks = has_masks(read_coco_json(json_file))
    return DatasetChoice(train, val, list(getattr(meta, "thing_classes", []) or []), masks)


def check_dataset_files(names) -> None:
    """Before training or evaluation starts, check what would stop it midway: for each of
    the registered dataset ``names`` that comes from a COCO json, that the json exists, that
    every annotation's category is declared, and that every image file is there. Raises
    ``D2nbError`` naming the dataset, the files and the fix."""
    from detectron2.data import MetadataCatalog

    for name in names:
        json_file = getattr(MetadataCatalog.get(name), "json_file", None) if name else None
        if not json_file:
            continue  # registered from a function (or not a json): detectron2 reads it as it is
        if not Path(json_file).is_file():
            raise D2nbError(f"dataset {name!r} is registered from {json_file!r}, which does not exist",
                            "put the dataset there (detectron2's builtin datasets live under "
                            "$DETECTRON2_DATASETS, default ./datasets), or pass dataset= a json or folder you have")
        coco = read_coco_json(json_file)
        _check_categories(name, json_file, coco)
        _check_image_files(name, json_file, coco, Path(MetadataCatalog.get(name).image_root))


def _check_categories(name, json_file, coco) -> None:
    def key(value):  # a malformed id (a list...) is still named, not a TypeError
        return value if isinstance(value, (int, float, str, type(None))) else repr(value)

    declared = {key(category.get("id")) for category in coco["categories"]}
    used = [key(a.get("category_id")) for a in coco["annotations"]]
    unknown = sorted(set(used) - declared, key=str)
    if unknown:
        used = sum(value not in declared for value in used)
        raise D2nbError(
            f"{used} annotations of dataset {name!r} ({json_file}) use category ids that its 'categories' "
            f"list does not declare: {unknown[:10]}",
            "add those categories to the json, or write a copy without those annotations: "
            "d2nb.data.validate.fix_coco(d2nb.data.validate.validate_coco(json_file), 'fixed.json')")


def _check_image_files(name, json_file, coco, image_root: Path) -> None:
    """One directory listing per folder, not one stat per image: fast on network drives too."""
    wanted = defaultdict(list)
    for image in coco["images"]:
        path = image_root / str(image.get("file_name", ""))
        wanted[path.parent].append(path.name)
    missing = []
    for folder, names in wanted.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing += [str(folder / n) for n in names if n not in present]
    if missing:
        raise D2nbError(
            f"{len(missing)} of the {len(coco['images'])} images of dataset {name!r} ({json_file}) are missing "
            f"under {str(image_root)!r}, e.g. {', '.join(map(repr, missing[:3]))}",
            "copy the images there, or pass image_root= the folder that holds them, or write a copy of the json "
            "without them: d2nb.data.validate.fix_coco(d2nb.data.validate.validate_coco(json_file), 'fixed.json')")
