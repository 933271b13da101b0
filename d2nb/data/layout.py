"""What detectron2's builtin datasets need under ``$DETECTRON2_DATASETS``, and what is there.

    rows = check_layout()              # one plain dict per builtin dataset name
    layout_table(rows)                 # shown as a table in a notebook

detectron2 registers names such as ``coco_2017_train`` or ``voc_2007_test`` at import, each
pointing at fixed paths under ``$DETECTRON2_DATASETS`` (default ``./datasets``). The paths
here are read from detectron2's own tables (``detectron2.data.datasets.builtin``), so they
are the ones the installed detectron2 will open; a folder counts as present when it holds
at least one entry.
"""

from __future__ import annotations

import os
from pathlib import Path

from d2nb.data.synthetic import default_datasets_root
from d2nb.data.table import Table

STATUSES = ("ready", "partial", "missing")
VOC_SPLITS = {"VOC2007": ("trainval", "train", "val", "test"), "VOC2012": ("trainval", "train", "val")}
HOW_TO_GET = {
    "coco": "python -m d2nb data download {part}   (or cocodataset.org/#download)",
    "coco_test": "test2017.zip and image_info_test2017.zip from cocodataset.org/#download",
    "coco_subset": "python -m d2nb data subset --builtin {source} --num-images {count}",
    "coco_panoptic": "panoptic_annotations_trainval2017.zip from cocodataset.org/#download, then "
                     "detectron2's datasets/prepare_panoptic_fpn.py for the panoptic_stuff folders",
    "lvis": "json files from lvisdataset.org/dataset; images are COCO 2017's "
            "(python -m d2nb data download train2017 val2017)",
    "cityscapes": "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                  "cityscapes-dataset.com/downloads (free login)",
    "voc": "VOCtrainval / VOCtest tar files from host.robots.ox.ac.uk/pascal/VOC, extracted as {folder}/",
}


def expected_layout() -> list:
    """``[(dataset name, family, [relative paths], how to get)]`` for the builtin datasets:
    COCO 2017 instances, person keypoints and panoptic, LVIS, Cityscapes and Pascal VOC."""
    from detectron2.data.datasets import builtin

    entries = []
    for family, splits in builtin._PREDEFINED_SPLITS_COCO.items():
        label = "COCO 2017 instances" if family == "coco" else "COCO 2017 person keypoints"
        for name, (image_root, json_file) in splits.items():
            if "2017" in name:
                entries.append((name, label, [json_file, image_root], _coco_how_to_get(name, json_file)))
    for prefix, (panoptic_root, panoptic_json, semantic_root) in builtin._PREDEFINED_SPLITS_COCO_PANOPTIC.items():
        image_root, json_file = builtin._PREDEFINED_SPLITS_COCO["coco"][prefix[: -len("_panoptic")]]
        how = HOW_TO_GET["coco_panoptic"]
        entries.append((prefix, "COCO 2017 panoptic", [panoptic_json, panoptic_root, image_root, json_file], how))
        entries.append((prefix + "_separated", "COCO 2017 panoptic (PanopticFPN)",
                        [panoptic_json, panoptic_root, semantic_root, image_root, json_file], how))
    for family, splits in builtin._PREDEFINED_SPLITS_LVIS.items():
        for name, (_, json_file) in splits.items():
            entries.append((name, f"LVIS {family[len('lvis_'):]}", [json_file, "coco/train2017", "coco/val2017"],
                            HOW_TO_GET["lvis"]))
    for key, (image_dir, gt_dir) in builtin._RAW_CITYSCAPES_SPLITS.items():
        name = key.format(task="{instance_seg,sem_seg}")
        entries.append((name, "Cityscapes fine", [image_dir.rstrip("/"), gt_dir.rstrip("/")], HOW_TO_GET["cityscapes"]))
    for folder, splits in VOC_SPLITS.items():
        for split in splits:
            name = f"voc_{folder[3:]}_{split}"
            paths = [f"{folder}/Annotations", f"{folder}/JPEGImages", f"{folder}/ImageSets/Main/{split}.txt"]
            entries.append((name, f"Pascal VOC {folder[3:]}", paths, HOW_TO_GET["voc"].format(folder=folder)))
    return entries


def _coco_how_to_get(name: str, json_file: str) -> str:
    if name.endswith("_100"):
        return HOW_TO_GET["coco_subset"].format(source=name[: -len("_100")], count=100)
    if "test" in name:
        return HOW_TO_GET["coco_test"]
    return HOW_TO_GET["coco"].format(part="annotations " + ("train2017" if "train" in name else "val2017"))


def is_present(path: Path) -> bool:
    """A file that exists, or a folder with at least one entry."""
    if path.is_file():
        return True
    if path.is_dir():
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    return False


def check_layout(root=None, families=None) -> list:
    """One row per builtin dataset: ``dataset``, ``family``, ``status`` (ready / partial /
    missing), ``present`` and ``missing`` (paths relative to ``root``), ``how to get``.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ./datasets); ``families`` keeps only
    the rows whose family contains one of the given words (e.g. ``["COCO", "VOC"]``).
    """
    root = Path(root) if root is not None else default_datasets_root()
    rows = []
    for name, family, paths, how in expected_layout():
        if families and not any(word.lower() in family.lower() for word in families):
            continue
        present = [p for p in paths if is_present(root / p)]
        missing = [p for p in paths if p not in present]
        status = "ready" if not missing else "partial" if present else "missing"
        rows.append({"dataset": name, "family": family, "status": status, "present": present,
                     "missing": missing, "how to get": "" if status == "ready" else how})
    return rows


def layout_table(rows=None, root=None) -> Table:
    """The layout rows as a table (``.to_frame()`` for pandas); checks ``root`` when no rows."""
    where = ""
    if rows is None or root is not None:
        root = Path(root) if root is not None else default_datasets_root()
        where = f" under {root.resolve()}"
    rows = check_layout(root) if rows is None else rows
    ready = sum(row["status"] == "ready" for row in rows)
    return Table(rows, title=f"detectron2's builtin datasets{where}: {ready} of {len(rows)} ready")
