"""From what a user names as ``dataset`` to registered COCO splits with classes a person reads.

    prepared = prepare_dataset("exports/bccd", "runs/prep", name="bccd")
    prepared.splits          # {"train": "bccd_train", "valid": "bccd_valid", "test": "bccd_test"}
    prepared.class_names     # ["rbc", "wbc"]: Roboflow's placeholder category 0 left out
    print(prepared.describe())
    reports = validate_splits(prepared)          # {split: ValidationReport}
    write_split_report(reports, "runs/prep/report.json")

The format is detected (``d2nb.data.formats``) and converted into ``output_dir`` when it is
not COCO. Roboflow exports declare a placeholder category (id 0, no annotations, named after
the supercategory of the real classes: ``RBC-WBC`` over ``rbc`` and ``wbc``, ``Tumor`` over
``Tumor``); it would become a class the model predicts and a row of every AP table, so
``keep_placeholder=False`` (the default) writes a copy of the json without it. Category ids
are never renumbered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from d2nb.data.formats import find_splits
from d2nb.data.register import has_masks, read_coco_json, register_coco_json, write_coco_json
from d2nb.errors import D2nbError

PLACEHOLDER_NAMES = ("_background_", "__background__", "background")
RARE_INSTANCES = 10  # fewer instances than this in train: a class the model will hardly learn
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("valid", "val", "validation", "test")


@dataclass
class PreparedDataset:
    """Registered splits of one dataset and what a reader needs to know about them."""

    name: str
    format: str
    source: str
    splits: dict = field(default_factory=dict)        # split -> registered name
    json_files: dict = field(default_factory=dict)    # split -> the json registered
    source_jsons: dict = field(default_factory=dict)  # split -> the user's (or converted) json, before placeholders
    image_roots: dict = field(default_factory=dict)
    class_names: list = field(default_factory=list)
    category_ids: list = field(default_factory=list)  # the json id of each class, in class order
    has_masks: bool = True
    placeholder: dict | None = None                   # the category left out, if any
    missing: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def train(self) -> str | None:
        split = next((s for s in TRAIN_SPLITS if s in self.splits), None)
        return self.splits[split] if split else (next(iter(self.splits.values())) if len(self.splits) == 1 else None)

    @property
    def val(self) -> str | None:
        split = next((s for s in VAL_SPLITS if s in self.splits and self.splits[s] != self.train), None)
        return self.splits[split] if split else None

    def split_of(self, registered: str) -> str:
        return next(split for split, name in self.splits.items() if name == registered)

    @property
    def main_split(self) -> str:
        """The split to look at first: train, else the first there is."""
        return self.train or next(iter(self.splits.values()))

    def id_mapping(self) -> str | None:
        """One line on how json category ids become class indices, when they are not 1..K."""
        if self.category_ids == list(range(1, len(self.category_ids) + 1)):
            return None
        pairs = ", ".join(f"{cid}->{i} {name}" for i, (cid, name) in
                          enumerate(zip(self.category_ids, self.class_names)))
        return f"category ids map to class indices as: {pairs}"

    def describe(self) -> str:
        lines = [f"{self.source}: {self.format}, registered as "
                 + ", ".join(f"{registered} ({split})" for split, registered in self.splits.items())]
        lines.append(f"classes ({len(self.class_names)}): {', '.join(self.class_names)}; "
                     + ("masks" if self.has_masks else "boxes only"))
        if self.placeholder:
            lines.append(f"left out the placeholder category id {self.placeholder['id']} {self.placeholder['name']!r} "
                         "(no annotations, an export's habit, not a class); keep_placeholder=True keeps it")
        mapping = self.id_mapping()
        if mapping:
            lines.append(mapping)
        lines += [f"split {line}; using the splits present" for line in self.missing]
        lines += self.notes
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def find_placeholder(categories: list, annotations_by_split: list) -> dict | None:
    """Roboflow's placeholder: category id 0 that no annotation of any split uses, named
    after the supercategory of every other category (or a background name)."""
    zero = [c for c in categories if c.get("id") == 0]
    if len(zero) != 1 or len(categories) < 2:
        return None
    if any(a.get("category_id") == 0 for annotations in annotations_by_split for a in annotations):
        return None
    others = [c for c in categories if c.get("id") != 0]
    name = zero[0].get("name")
    if all(c.get("supercategory") == name for c in others) or str(name).lower() in PLACEHOLDER_NAMES:
        return dict(zero[0])
    return None


def prepare_dataset(dataset, output_dir=None, name: str | None = None, image_root=None,
                    keep_placeholder: bool = False) -> PreparedDataset:
    """Detect, convert (into ``output_dir``), register every split of ``dataset`` (a path:
    a COCO json, a Roboflow, YOLO, VOC or labelme export) as ``<name>_<split>``.

    ``name`` defaults to the folder's name; a dataset of one split (a json file, a labelme
    folder) is registered as ``name``, else as the split's name.
    ``output_dir`` defaults to a folder under ``$DETECTRON2_DATASETS`` keyed by the source.
    Raises ``D2nbError`` for a path of no known format, naming what the folder holds.
    """
    source = Path(str(dataset))
    output_dir = Path(output_dir) if output_dir is not None else _default_output(source)
    found = find_splits(source, output_dir / "coco", image_root)
    base = name or source.resolve().name
    cocos = {split: read_coco_json(s.json_file) for split, s in found.splits.items()}
    categories = _shared_categories(cocos, source)
    placeholder = None if keep_placeholder else find_placeholder(categories, [c["annotations"] for c in cocos.values()])
    prepared = PreparedDataset(name=base, format=found.format, source=str(source),
                               missing=list(found.missing), notes=list(found.notes), placeholder=placeholder)
    for split, found_split in found.splits.items():
        json_file = found_split.json_file
        if placeholder is not None:
            coco = dict(cocos[split])
            coco["categories"] = [c for c in coco["categories"] if c.get("id") != placeholder["id"]]
            json_file = write_coco_json(coco, output_dir / "coco" / f"{split}_classes.json", found_split.json_file)
        registered = (name or split) if len(found.splits) == 1 and found.format != "roboflow_coco" \
            else f"{base}_{split}"
        prepared.splits[split] = register_coco_json(registered, json_file, found_split.image_root)
        prepared.json_files[split] = Path(json_file)
        prepared.source_jsons[split] = Path(found_split.json_file)
        prepared.image_roots[split] = Path(found_split.image_root)
    kept = sorted((c for c in categories if placeholder is None or c.get("id") != placeholder["id"]),
                  key=lambda c: c["id"])
    prepared.class_names = [c["name"] for c in kept]
    prepared.category_ids = [c["id"] for c in kept]
    prepared.has_masks = any(has_masks(coco) for coco in cocos.values())
    return prepared


def _shared_categories(cocos: dict, source: Path) -> list:
    """The categories every split declares; splits that disagree would train one model on
    two meanings of a class index."""
    declared = {split: sorted(((c.get("id"), c.get("name")) for c in coco["categories"]), key=str)
                for split, coco in cocos.items()}
    first_split, first = next(iter(declared.items()))
    for split, pairs in declared.items():
        if pairs != first:
            raise D2nbError(f"the splits of {str(source)!r} declare different categories: {first_split} has "
                            f"{first}, {split} has {pairs}",
                            "export every split with the same class list, or pass one split's json as the dataset")
    return list(next(iter(cocos.values()))["categories"])


def _default_output(source: Path) -> Path:
    from d2nb.data.synthetic import default_datasets_root

    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:10]
    return default_datasets_root() / "d2nb_prepared" / f"{source.resolve().name}-{key}"


def validate_splits(prepared: PreparedDataset, check_images: bool = True, expect_masks=None) -> dict:
    """``{split: ValidationReport}`` of every split as the user's files hold it (the json
    before a placeholder is left out); rare classes are checked in train only."""
    from d2nb.data.validate import validate_coco

    train_split = next((s for s, n in prepared.splits.items() if n == prepared.train), None)
    missing = [split for split in prepared.splits if split not in prepared.source_jsons]
    if missing:
        raise D2nbError(f"splits {missing} of {prepared.source!r} are registered, but not from a COCO json",
                        "validate a COCO json or an export folder instead")
    return {split: validate_coco(prepared.source_jsons[split], prepared.image_roots[split],
                                 expect_masks=expect_masks, check_images=check_images,
                                 min_instances=RARE_INSTANCES if split == train_split else 0)
            for split in prepared.splits}


def split_report(reports: dict) -> dict:
    """For every split: ``images``, ``annotations``, ``categories`` (``{id, name, instances}``,
    unused ones with 0) and ``defects`` (``{kind: count}`` of what validation found)."""
    return {split: {"images": report.num_images, "annotations": report.num_annotations,
                    "categories": [dict(c) for c in report.categories],
                    "defects": {kind: n for kind, n in report.counts.items() if n}}
            for split, report in reports.items()}


def write_split_report(reports: dict, path) -> Path:
    """Write ``split_report(reports)`` as json; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split_report(reports), indent=1))
    return path

