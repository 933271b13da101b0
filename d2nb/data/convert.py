"""Converting other annotation formats to a COCO instances json detectron2 reads.

    voc_to_coco("VOC/Annotations", "voc.json")                         # Pascal VOC XML folder
    labelme_to_coco("labelme_folder", "labelme.json")                  # polygons and rectangles
    yolo_to_coco("images/", "labels/", "yolo.json", "classes.txt")     # YOLO txt (boxes or polygons)

Each writes a new json (atomically) and returns its path; categories get ids 1..K in the
order of ``class_names`` (default: the sorted names found). Boxes follow each format's
convention so that a box written in that format comes back unchanged:

- VOC: corners are 1-based inclusive pixel indices, read as detectron2's own VOC loader
  does: ``x = xmin - 1``, ``width = xmax - xmin + 1``;
- labelme: points are COCO's continuous pixel coordinates;
- YOLO: centre and size normalised by the image's size (read from the image's header),
  multiplied out exactly (``decimals=2`` rounds to hundredths of a pixel, which gives back
  the integer boxes that the txt files' 6 significant digits blur).

labelme shapes that share a ``group_id`` (one object drawn in parts) become one annotation
with several polygons, as labelme's own ``labelme2coco`` makes them; ``__ignore__`` shapes
are left out.

Every unreadable file gives a ``D2nbError`` naming the file (and line) and the fix.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from d2nb.data.register import write_coco_json
from d2nb.data.validate import read_image_size
from d2nb.errors import D2nbError

IGNORE_LABEL = "__ignore__"  # labelme's label for regions to leave out
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def voc_to_coco(annotations_dir, output_json, images_dir=None, class_names=None, only=None) -> Path:
    """Pascal VOC XML files (one per image) to COCO; boxes only.

    ``images_dir`` (default: the sibling ``JPEGImages`` folder, else the XML folder) is only
    read for images whose XML has no size. ``class_names`` fixes the category order; an
    object of another class is a ``D2nbError``. ``only``: the file stems to convert (a VOC
    ``ImageSets/Main/<split>.txt``'s ids), default all.
    """
    annotations_dir = Path(annotations_dir)
    files = sorted(annotations_dir.glob("*.xml")) if annotations_dir.is_dir() else []
    if only is not None:
        wanted = set(only)
        files = [path for path in files if path.stem in wanted]
    if not files:
        raise D2nbError(f"no .xml files in {str(annotations_dir)!r}",
                        "pass the VOC 'Annotations' folder (one XML file per image)")
    if images_dir is None:
        images_dir = annotations_dir.parent / "JPEGImages"
        images_dir = images_dir if images_dir.is_dir() else annotations_dir
    records = []
    for path in files:
        try:
            tree = ElementTree.parse(path)
        except ElementTree.ParseError as error:
            raise D2nbError(f"{str(path)!r} is not valid XML ({error})", "fix or remove that file") from None
        file_name = tree.findtext("filename") or f"{path.stem}.jpg"
        height, width = _int_or_none(tree.findtext("size/height")), _int_or_none(tree.findtext("size/width"))
        if not height or not width:
            height, width = _size_from_file(Path(images_dir) / file_name, path)
        objects = []
        for element in tree.iter("object"):
            try:
                xmin, ymin, xmax, ymax = (float(element.findtext(f"bndbox/{corner}"))
                                          for corner in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise D2nbError(f"{str(path)!r}: an object of class {element.findtext('name')!r} has no "
                                "numeric bndbox xmin/ymin/xmax/ymax", "fix that object in the XML") from None
            box = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
            objects.append((str(element.findtext("name", "")).strip(), box, []))
        records.append((file_name, height, width, objects))
    return _write(records, class_names, output_json, str(annotations_dir))


def labelme_to_coco(folder, output_json, class_names=None) -> Path:
    """labelme JSON files (one per image) to COCO: ``polygon`` shapes become masks,
    ``rectangle`` shapes boxes (with a 4-corner mask when the folder also has polygons, so
    that every annotation of a mask dataset has a mask). Other shape types are skipped
    with a warning. File names are the ``imagePath`` entries, relative to ``folder``.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise D2nbError(f"no labelme .json files in {str(folder)!r}", "pass the folder labelme saved into")
    documents = []
    for path in files:
        try:
            document = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise D2nbError(f"{str(path)!r} is not valid JSON ({error})", "fix or remove that file") from None
        if not isinstance(document, dict) or "shapes" not in document:
            raise D2nbError(f"{str(path)!r} is not a labelme file (no 'shapes')",
                            "pass a folder of labelme annotation files only")
        documents.append((path, document))
    with_polygons = any(s.get("shape_type", "polygon") == "polygon" for _, d in documents for s in d["shapes"])
    records, skipped = [], {}
    for path, document in documents:
        file_name = str(document.get("imagePath") or f"{path.stem}.jpg").replace("\\", "/")
        height, width = document.get("imageHeight"), document.get("imageWidth")
        if not height or not width:
            height, width = _size_from_file(folder / file_name, path)
        objects, groups = [], {}
        for shape in document["shapes"]:
            kind = shape.get("shape_type") or "polygon"
            if shape.get("label") == IGNORE_LABEL:
                continue
            try:
                points = [(float(x), float(y)) for x, y in shape.get("points", [])]
            except (TypeError, ValueError):
                raise D2nbError(f"{str(path)!r}: shape {shape.get('label')!r} has points that are not "
                                "[x, y] pairs", "fix that shape in labelme") from None
            if kind == "rectangle" and len(points) == 2:
                (x0, y0), (x1, y1) = points
                x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
                corners = [[x0, y0, x1, y0, x1, y1, x0, y1]] if with_polygons else []
                part = (shape.get("label", ""), [x0, y0, x1 - x0, y1 - y0], corners)
            elif kind == "polygon" and len(points) >= 3:
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                part = (shape.get("label", ""), box, [[v for p in points for v in p]])
            else:
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            if shape.get("group_id") is None:
                objects.append(part)
            else:  # parts of one object: one annotation, its box around every part
                key = (part[0], shape["group_id"])
                if key not in groups:
                    groups[key] = len(objects)
                    objects.append(part)
                else:
                    objects[groups[key]] = _joined(objects[groups[key]], part)
        records.append((file_name, int(height), int(width), objects))
    if skipped:
        warnings.warn(f"labelme_to_coco skipped shapes it cannot turn into boxes or masks: {skipped}")
    return _write(records, class_names, output_json, str(folder))


def yolo_to_coco(images_dir, labels_dir, output_json, class_names, decimals: int | None = None,
                 polygons_as_boxes: bool = False) -> Path:
    """YOLO txt labels to COCO: ``class cx cy w h`` lines (boxes) or ``class x1 y1 x2 y2 ...``
    lines (polygons), all normalised to 0-1. ``class_names`` is a list, a ``classes.txt``
    (one name a line) or a YOLO ``data.yaml`` (its ``names``). Image sizes are read from
    the images; an image without a label file has no annotations. ``polygons_as_boxes``
    keeps only each polygon's box (for exports that mix box and polygon lines: a mask model
    needs a mask on every instance).
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    names = read_class_names(class_names)
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if images_dir.is_dir() else []
    if not images:
        raise D2nbError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(images_dir)!r}",
                        "pass the folder holding the pictures the YOLO labels describe")
    records = []
    for image_path in images:
        relative = image_path.relative_to(images_dir)
        height, width = _size_from_file(image_path, image_path)
        label_path = (labels_dir / relative).with_suffix(".txt")
        objects = []
        lines = label_path.read_text().splitlines() if label_path.is_file() else []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                name, box, polygons = _yolo_object(line, names, height, width, decimals, f"{label_path}:{number}")
                objects.append((name, box, [] if polygons_as_boxes else polygons))
        records.append((relative.as_posix(), height, width, objects))
    return _write(records, names, output_json, str(labels_dir))


def _joined(first, second):
    """Two parts of one labelme object: the box around both, the polygons of both."""
    (name, (x0, y0, w0, h0), polygons0), (_, (x1, y1, w1, h1), polygons1) = first, second
    left, top = min(x0, x1), min(y0, y1)
    right, bottom = max(x0 + w0, x1 + w1), max(y0 + h0, y1 + h1)
    return name, [left, top, right - left, bottom - top], polygons0 + polygons1


def read_class_names(class_names) -> list:
    """Class names from a list, a text file (one a line) or a YOLO data.yaml (``names``)."""
    if isinstance(class_names, (list, tuple)):
        return [str(n) for n in class_names]
    path = Path(str(class_names))
    if not path.is_file():
        raise D2nbError(f"class names {class_names!r} are neither a list nor an existing file",
                        "pass a list of names, a classes.txt (one name a line) or a data.yaml")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        names = (yaml.safe_load(path.read_text()) or {}).get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if not names:
            raise D2nbError(f"{str(path)!r} has no 'names' list", "add names: [class0, class1, ...]")
        return [str(n) for n in names]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _yolo_object(line: str, names: list, height: int, width: int, decimals: int, where: str):
    values = line.split()
    try:
        class_index, numbers = int(values[0]), [float(v) for v in values[1:]]
    except ValueError:
        raise D2nbError(f"{where}: {line!r} is not 'class x y ...' numbers", "fix that line") from None
    if not 0 <= class_index < len(names):
        raise D2nbError(f"{where}: class {class_index} but only {len(names)} class names are given",
                        "pass the class names list the labels were made with")
    def rounded(value):
        return value if decimals is None else round(value, decimals)

    if len(numbers) == 4:
        cx, cy, w, h = numbers
        x0, y0 = rounded((cx - w / 2) * width), rounded((cy - h / 2) * height)
        box = [x0, y0, rounded(w * width), rounded(h * height)]
        return names[class_index], box, []
    if len(numbers) >= 6 and len(numbers) % 2 == 0:
        polygon = [rounded(v * (width if i % 2 == 0 else height)) for i, v in enumerate(numbers)]
        xs, ys = polygon[0::2], polygon[1::2]
        return names[class_index], [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], [polygon]
    raise D2nbError(f"{where}: {len(numbers)} numbers after the class; YOLO lines have 4 (a box) or an "
                    "even number of at least 6 (a polygon)", "fix that line")


def _write(records, class_names, output_json, where: str) -> Path:
    """records: [(file_name, height, width, [(class name, xywh box, polygons)])]."""
    found = sorted({name for *_, objects in records for name, _, _ in objects})
    names = read_class_names(class_names) if class_names else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise D2nbError(f"classes {unknown} found in {where!r} are not in class_names {names}",
                        "add them to class_names, or leave class_names out to take every class found")
    category_id = {name: index + 1 for index, name in enumerate(names)}
    images, annotations = [], []
    for image_id, (file_name, height, width, objects) in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)})
        for name, box, polygons in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[name],
                                "bbox": box, "area": _area(box, polygons), "segmentation": polygons, "iscrowd": 0})
    coco = {"info": {"description": f"converted by d2nb from {where}"}, "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n, "supercategory": "none"} for n, i in category_id.items()]}
    return write_coco_json(coco, output_json)


def _area(box, polygons) -> float:
    if not polygons:
        return float(box[2] * box[3])
    total = 0.0
    for polygon in polygons:  # shoelace formula
        xs, ys = polygon[0::2], polygon[1::2]
        total += abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2
    return total


def _int_or_none(text):
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def _size_from_file(image_path: Path, described_by: Path) -> tuple:
    try:
        return read_image_size(image_path)
    except OSError:
        raise D2nbError(f"{str(described_by)!r} gives no image size and its image {str(image_path)!r} "
                        "cannot be read", "put the image next to its annotation, or pass images_dir=") from None
