"""Which annotation format a path holds, and its splits as COCO jsons detectron2 reads.

    found = find_splits("exports/roadsigns", "runs/prep/coco")
    found.format            # "yolo"
    found.splits["valid"]   # Split(json_file=runs/prep/coco/valid.json, image_root=.../valid/images)
    found.missing           # ["train: data.yaml names dataset/train/images, which is not there"]

A path is one of:

- ``coco``: a COCO json file, or a folder holding one (labelme's ``data_dataset_coco``);
- ``roboflow_coco``: a folder of ``train/``, ``valid/``, ``test/`` splits, each with its json;
- ``yolo``: a ``data.yaml`` (its ``train``/``val``/``test`` image folders, ``names``), or a
  ``classes.txt`` beside ``images/`` and ``labels/`` (or ``<split>/images``, ``images/<split>``);
- ``voc``: a Pascal VOC folder (``Annotations/*.xml`` with ``JPEGImages/``; its
  ``ImageSets/Main/<split>.txt`` files are the splits), or a folder of VOC XML files;
- ``labelme``: a folder of labelme JSON files (``shapes``) beside their pictures.

COCO files are used where they are; every other format is converted into ``output_dir``
(``<split>.json``, the images stay where they are). The user's files are never written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from d2nb.data.convert import labelme_to_coco, read_class_names, voc_to_coco, yolo_to_coco
from d2nb.data.register import find_roboflow_splits
from d2nb.errors import D2nbError

FORMATS = ("coco", "roboflow_coco", "yolo", "voc", "labelme")
YOLO_YAMLS = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")
YOLO_CLASS_FILES = ("classes.txt", "obj.names", "classes.names")
YOLO_SPLIT_KEYS = ("train", "val", "test")
VOC_SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split as a COCO json and the folder its ``file_name``s are relative to."""

    name: str
    json_file: Path
    image_root: Path
    converted: bool = False


@dataclass
class FoundSplits:
    """What ``find_splits`` found: the format, the splits, what a file names but is absent,
    and notes worth a line (labels changed on the way)."""

    format: str
    source: Path
    splits: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def detect_format(path) -> str:
    """The format of ``path`` (one of ``FORMATS``), or a ``D2nbError`` that says what was found."""
    path = Path(str(path))
    if path.suffix == ".json":
        return "coco"  # read_coco_json says precisely what a missing json, or one that is not COCO, lacks
    if path.is_file():
        if path.name in YOLO_YAMLS or path.suffix in (".yaml", ".yml"):
            return "yolo"
        raise D2nbError(f"{str(path)!r} is a file but neither a COCO json nor a YOLO data.yaml",
                        "pass a COCO json, a data.yaml, or the folder of an export")
    if not path.is_dir():
        raise D2nbError(f"dataset {str(path)!r} does not exist",
                        "check the path; relative paths are read from the notebook's (or shell's) folder")
    if find_roboflow_splits(path):
        return "roboflow_coco"
    if any((path / name).is_file() for name in YOLO_YAMLS) or _yolo_class_file(path):
        return "yolo"
    if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return "voc"
    jsons = sorted(path.glob("*.json"))
    if any(_is_labelme(p) for p in jsons[:20]):
        return "labelme"
    if [p for p in jsons if _is_coco(p)]:
        return "coco"
    seen = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:12]
    raise D2nbError(
        f"cannot tell the annotation format of {str(path)!r} (it holds: {', '.join(seen) or 'nothing'})",
        "pass a COCO json, a Roboflow export (train/ valid/ test/ with _annotations.coco.json), a YOLO folder "
        "(data.yaml or classes.txt, images/ and labels/), a Pascal VOC folder (Annotations/ and JPEGImages/) "
        "or a folder of labelme .json files")


def find_splits(path, output_dir, image_root=None) -> FoundSplits:
    """The splits of ``path`` as COCO jsons; formats other than COCO are converted into
    ``output_dir``. ``image_root`` only applies to a single COCO json."""
    path = Path(str(path))
    kind = detect_format(path)
    output_dir = Path(output_dir)
    found = FoundSplits(kind, path)
    if kind == "roboflow_coco":
        for split, json_file in find_roboflow_splits(path).items():
            found.splits[split] = Split(split, json_file, json_file.parent)
        found.missing = [f"{split}: no {split}/ folder with a COCO json" for split in ("train", "valid", "test")
                         if split not in found.splits and split != "test"]
    elif kind == "coco":
        json_file = path if path.suffix == ".json" else [p for p in sorted(path.glob("*.json")) if _is_coco(p)][0]
        name = coco_split_name(json_file)
        found.splits[name] = Split(name, json_file, Path(image_root) if image_root else json_file.parent)
    elif kind == "yolo":
        _yolo_splits(path, output_dir, found)
    elif kind == "voc":
        _voc_splits(path, output_dir, found)
    else:
        name = path.resolve().name
        json_file = labelme_to_coco(path, output_dir / f"{name}.json")
        found.splits[name] = Split(name, json_file, path, converted=True)
    return found


def coco_split_name(json_file) -> str:
    """A single COCO file's split is named after the file (Roboflow's ``_annotations.coco.json``
    after its folder)."""
    json_file = Path(json_file)
    return json_file.stem.replace("_annotations.coco", json_file.parent.resolve().name) or json_file.parent.name


def _is_coco(path: Path) -> bool:
    try:
        head = path.open("rb").read(1 << 16).decode("utf-8", "ignore")
    except OSError:
        return False
    return '"images"' in head or '"annotations"' in head or ('"categories"' in head and path.stat().st_size < 1 << 16)


def _is_labelme(path: Path) -> bool:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(document, dict) and "shapes" in document


# --- YOLO ---------------------------------------------------------------------------------

def _yolo_class_file(folder: Path):
    return next((folder / name for name in YOLO_CLASS_FILES if (folder / name).is_file()), None)


def _yolo_splits(path: Path, output_dir: Path, found: FoundSplits) -> None:
    folder = path.parent if path.is_file() else path
    yaml_file = path if path.is_file() else next((folder / n for n in YOLO_YAMLS if (folder / n).is_file()), None)
    if yaml_file is not None:
        import yaml

        document = yaml.safe_load(yaml_file.read_text()) or {}
        names = read_class_names(yaml_file)
        images_dirs = {}
        for key in YOLO_SPLIT_KEYS:
            value = document.get(key)
            if not value:
                continue
            if not isinstance(value, str):
                raise D2nbError(f"{yaml_file}: {key}: {value!r} is not one folder",
                                f"write {key}: as the path of one image folder")
            images_dir = _yaml_folder(folder, document.get("path"), value)
            if images_dir is None:
                found.missing.append(f"{key}: {yaml_file.name} names {value}, which is not there")
            else:
                images_dirs[key] = images_dir
    else:
        names = read_class_names(_yolo_class_file(folder))
        images_dirs = _yolo_folders_without_yaml(folder)
    if not images_dirs:
        raise D2nbError(f"the YOLO export {str(path)!r} has no image folder that exists"
                        + (f" ({'; '.join(found.missing)})" if found.missing else ""),
                        "put the images/ and labels/ folders where data.yaml says, or fix its train:/val:/test: paths")
    pairs = {}
    for key, images_dir in images_dirs.items():
        labels_dir = _labels_folder(images_dir)
        split = images_dir.name if images_dir.name != "images" else (
            images_dir.parent.name if images_dir.parent != folder else key)
        pairs[split] = (images_dir, labels_dir)
    boxes, polygons = _count_yolo_lines(labels for _, labels in pairs.values())
    as_boxes = bool(boxes and polygons)
    if as_boxes:
        found.notes.append(f"the labels mix {boxes} boxes and {polygons} polygons: every polygon is kept as its "
                           "box, and a box model is trained (a mask model needs a mask on every instance)")
    for split, (images_dir, labels_dir) in pairs.items():
        json_file = yolo_to_coco(images_dir, labels_dir, output_dir / f"{split}.json", names,
                                 polygons_as_boxes=as_boxes)
        found.splits[split] = Split(split, json_file, images_dir, converted=True)


def _yaml_folder(folder: Path, root, value: str):
    """data.yaml's path as Ultralytics and Roboflow write it: relative to ``path:``, to the
    yaml's folder, or (Roboflow's ``../train/images``) one level too high."""
    candidates = []
    if root:
        candidates.append((folder / str(root)) / value)
    candidates += [folder / value, folder / value.replace("../", "", 1), folder.parent / value]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _yolo_folders_without_yaml(folder: Path) -> dict:
    if (folder / "images").is_dir() and any(p.is_dir() for p in (folder / "images").iterdir()):
        return {p.name: p for p in sorted((folder / "images").iterdir()) if p.is_dir()}  # images/train, ...
    splits = {p.name: p / "images" for p in sorted(folder.iterdir()) if (p / "images").is_dir()}
    if splits:
        return splits  # train/images, valid/images, ...
    return {folder.resolve().name: folder / "images"} if (folder / "images").is_dir() else {}


def _labels_folder(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    if "images" in parts:
        index = len(parts) - 1 - parts[::-1].index("images")
        candidate = Path(*parts[:index], "labels", *parts[index + 1:])
        if candidate.is_dir():
            return candidate
    if (images_dir.parent / "labels").is_dir():
        return images_dir.parent / "labels"
    return images_dir  # labels beside the images (darknet's layout)


def _count_yolo_lines(label_dirs) -> tuple:
    boxes = polygons = 0
    for labels_dir in label_dirs:
        for label_file in Path(labels_dir).rglob("*.txt"):
            for line in label_file.read_text().splitlines():
                values = len(line.split())
                boxes += values == 5
                polygons += values >= 7
    return boxes, polygons


# --- Pascal VOC ----------------------------------------------------------------------------

def _voc_splits(path: Path, output_dir: Path, found: FoundSplits) -> None:
    annotations = path / "Annotations" if (path / "Annotations").is_dir() else path
    images = path / "JPEGImages" if (path / "JPEGImages").is_dir() else annotations
    names = _voc_class_names(annotations)
    lists = {split: path / "ImageSets" / "Main" / f"{split}.txt" for split in VOC_SPLITS}
    lists = {split: file for split, file in lists.items() if file.is_file()}
    if not lists:
        name = path.resolve().name
        found.splits[name] = Split(name, voc_to_coco(annotations, output_dir / f"{name}.json", images, names),
                                   images, converted=True)
        return
    for split, list_file in lists.items():
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        json_file = voc_to_coco(annotations, output_dir / f"{split}.json", images, names, only=ids)
        found.splits[split] = Split(split, json_file, images, converted=True)


def _voc_class_names(annotations: Path) -> list:
    import xml.etree.ElementTree as ElementTree

    names = set()
    for xml_file in annotations.glob("*.xml"):
        try:
            names.update(str(e.findtext("name", "")).strip() for e in ElementTree.parse(xml_file).iter("object"))
        except ElementTree.ParseError:
            pass  # voc_to_coco names the broken file
    return sorted(names)
