"""02_dataset_prep takes a dataset by folder, whatever tool exported it: Roboflow COCO, YOLO,
Pascal VOC, labelme; each split's counts in report.json are what the files hold (counted here
with plain json and text, not through d2nb), converted boxes equal the source's, and the real
exports in ../shared/datasets agree with the conversions their own tools made."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATASETS, run_notebook
from d2nb.data import dataset_splits, validate_splits
from d2nb.data.prepare import split_report
from test_data_convert import KNOWN, write_images, write_labelme, write_voc

BCCD = SHARED_DATASETS / "bccd"
LABELME = SHARED_DATASETS / "labelme_examples"
ROADSIGN = SHARED_DATASETS / "roadsign_yolo"


def prep(folder: Path, dataset, name: str) -> tuple:
    """Run 02 on ``dataset``; return (report.json, the notebook's text outputs)."""
    notebook = run_notebook("02_dataset_prep.ipynb", folder / f"{name}.out.ipynb",
                            {"dataset": str(dataset), "name": name, "output_dir": folder / name, "subset_size": 2},
                            timeout=900)
    text = "\n".join("".join(o.get("text", "")) for c in notebook["cells"] if c["cell_type"] == "code"
                     for o in c["outputs"])
    return json.loads((folder / name / "report.json").read_text()), text


def boxes_by_file(json_file: Path) -> dict:
    coco = json.loads(Path(json_file).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {image["id"]: Path(image["file_name"]).name for image in coco["images"]}
    found = {name: [] for name in files.values()}
    for annotation in coco["annotations"]:
        found[files[annotation["image_id"]]].append((names[annotation["category_id"]], annotation["bbox"]))
    return {name: sorted(boxes) for name, boxes in found.items()}


def assert_same_boxes(found: dict, expected: dict, tolerance: float = 1e-6):
    assert sorted(found) == sorted(expected)
    for file_name in expected:
        assert [n for n, _ in found[file_name]] == [n for n, _ in expected[file_name]], file_name
        for (_, box), (_, want) in zip(found[file_name], expected[file_name]):
            assert np.allclose(box, want, atol=tolerance, rtol=0), (file_name, box, want)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("formats")


def test_a_roboflow_coco_export_reports_every_split_as_its_files_hold_it(folder):
    report, text = prep(folder, BCCD, "bccd")
    assert sorted(report) == ["test", "train", "valid"]
    for split, counts in report.items():
        coco = json.loads((BCCD / split / "_annotations.coco.json").read_text())
        assert (counts["images"], counts["annotations"]) == (len(coco["images"]), len(coco["annotations"]))
        used = {c["id"]: sum(a["category_id"] == c["id"] for a in coco["annotations"]) for c in coco["categories"]}
        assert counts["categories"] == [{"id": c["id"], "name": c["name"], "instances": used[c["id"]]}
                                        for c in coco["categories"]]
        assert counts["defects"] == {"unused_category": 1}  # RBC-WBC, the placeholder
    assert "classes (2): rbc, wbc" in text and "left out the placeholder category id 0 'RBC-WBC'" in text
    assert "Category ids in annotations are not in" not in text


def write_yolo_export(root: Path, names: list) -> dict:
    """A Roboflow-style YOLO export: data.yaml, train/ and valid/ with images/ and labels/; the
    boxes the txt files say, in pixels, per file."""
    expected = {}
    for split, picks in (("train", KNOWN[:2]), ("valid", KNOWN[2:] + KNOWN[:1])):
        write_images(root / split / "images")
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for file_name, (height, width), objects in picks:
            if not (root / split / "images" / file_name).exists():
                continue
            lines = [f"{names.index(n)} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} "
                     f"{h / height:.6f}" for n, (x, y, w, h) in objects]
            (root / split / "labels" / f"{Path(file_name).stem}.txt").write_text("\n".join(lines) + "\n")
            boxes = []
            for line in lines:  # what the file says, multiplied out
                index, cx, cy, w, h = line.split()
                cx, cy, w, h = float(cx) * width, float(cy) * height, float(w) * width, float(h) * height
                boxes.append((names[int(index)], [cx - w / 2, cy - h / 2, w, h]))
            expected.setdefault(split, {})[file_name] = sorted(boxes)
        for extra in (root / split / "images").iterdir():  # only this split's pictures
            if extra.name not in [f for f, _, _ in picks]:
                extra.unlink()
    (root / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
                                    f"nc: {len(names)}\nnames: {names}\n")
    return expected


def test_a_yolo_export_is_converted_exactly_and_its_missing_split_named(folder):
    names = ["person", "car", "dog"]
    expected = write_yolo_export(folder / "yolo_export", names)
    report, text = prep(folder, folder / "yolo_export", "yolo")
    assert sorted(report) == ["train", "valid"]
    assert "split test: data.yaml names ../test/images, which is not there; using the splits present" in text
    for split, by_file in expected.items():
        assert report[split]["images"] == len(list((folder / "yolo_export" / split / "images").iterdir()))
        assert report[split]["annotations"] == sum(len(b) for b in by_file.values())
        found = boxes_by_file(folder / "yolo" / "coco" / f"{split}.json")
        assert_same_boxes({f: b for f, b in found.items() if b}, {f: b for f, b in by_file.items() if b})


def test_a_voc_folder_and_a_labelme_folder_are_converted_with_their_boxes(folder):
    write_voc(folder / "voc_export" / "Annotations")
    write_images(folder / "voc_export" / "JPEGImages")
    report, _ = prep(folder, folder / "voc_export", "voc")
    expected = {f: sorted(objects) for f, _, objects in KNOWN}
    assert list(report) == ["voc_export"] and report["voc_export"]["images"] == len(KNOWN)
    assert report["voc_export"]["annotations"] == sum(len(o) for _, _, o in KNOWN)
    assert_same_boxes(boxes_by_file(folder / "voc" / "coco" / "voc_export.json"), expected)

    write_labelme(folder / "labelme_export", with_polygon=False)
    write_images(folder / "labelme_export")
    report, _ = prep(folder, folder / "labelme_export", "labelme")
    assert report["labelme_export"]["annotations"] == sum(len(o) for _, _, o in KNOWN)
    assert_same_boxes(boxes_by_file(folder / "labelme" / "coco" / "labelme_export.json"), expected)


def test_labelme_polygons_and_groups_agree_with_labelmes_own_coco_conversion(tmp_path):
    prepared = dataset_splits(LABELME / "instance_segmentation" / "data_annotated", tmp_path, name="lm")
    ours = json.loads(prepared.json_files["data_annotated"].read_text())
    reference = json.loads((LABELME / "instance_segmentation" / "data_dataset_coco" / "annotations.json").read_text())

    def objects(coco):
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
        return sorted((files[a["image_id"]], names[a["category_id"]], a["segmentation"], a["bbox"])
                      for a in coco["annotations"])

    mine, theirs = objects(ours), objects(reference)
    assert len(mine) == len(theirs) == 12  # group_id parts joined, __ignore__ left out
    for (file_a, name_a, polygons_a, box_a), (file_b, name_b, polygons_b, box_b) in zip(mine, theirs):
        assert (file_a, name_a) == (file_b, name_b)
        assert len(polygons_a) == len(polygons_b) and all(np.allclose(p, q) for p, q in zip(polygons_a, polygons_b))
        # labelme boxes its rasterised mask (whole pixels); d2nb boxes the polygon itself
        assert np.abs(np.array(box_a) - box_b).max() <= 1.0 + 1e-9, (file_a, box_a, box_b)
    assert prepared.has_masks and "_background_" not in prepared.class_names


def test_labelmes_voc_export_matches_its_labelme_rectangles(tmp_path):
    voc = dataset_splits(LABELME / "bbox_detection" / "data_dataset_voc", tmp_path / "voc", name="voc")
    rectangles = dataset_splits(LABELME / "bbox_detection" / "data_annotated", tmp_path / "lm", name="lm")
    from_voc = boxes_by_file(voc.json_files["data_dataset_voc"])
    from_labelme = boxes_by_file(rectangles.json_files["data_annotated"])
    assert sorted(from_voc) == sorted(from_labelme)
    for file_name, boxes in from_labelme.items():  # labelme2voc writes whole-pixel corners
        assert [n for n, _ in from_voc[file_name]] == [n for n, _ in boxes]
        for (_, a), (_, b) in zip(from_voc[file_name], boxes):
            assert np.abs(np.array(a) - b).max() <= 1.5, (file_name, a, b)


def test_the_real_roboflow_yolo_export_uses_the_splits_present(folder):
    report, text = prep(folder, ROADSIGN, "roadsign")
    assert sorted(report) == ["test", "valid"]
    assert text.count("data.yaml names dataset/train/images, which is not there") == 1
    for split in ("valid", "test"):
        images = list((ROADSIGN / "dataset" / split / "images").glob("*.jpg"))
        lines = [line for label in (ROADSIGN / "dataset" / split / "labels").glob("*.txt")
                 for line in label.read_text().splitlines() if line.strip()]
        assert (report[split]["images"], report[split]["annotations"]) == (len(images), len(lines))
        assert len(report[split]["categories"]) == 16


def test_duplicate_names_and_rare_classes_are_warned_and_the_placeholder_dropped(tmp_path):
    export = tmp_path / "tumor"
    shutil.copytree(BCCD / "valid", export / "train")
    coco = json.loads((export / "train" / "_annotations.coco.json").read_text())
    coco["categories"] = [{"id": 0, "name": "Tumor", "supercategory": "none"},
                          {"id": 1, "name": "Tumor", "supercategory": "Tumor"},
                          {"id": 2, "name": "Cyst", "supercategory": "Tumor"}]
    for number, annotation in enumerate(coco["annotations"]):
        annotation["category_id"] = 2 if number < 3 else 1  # 3 instances of Cyst: rare
    (export / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    prepared = dataset_splits(export, tmp_path / "out")
    assert prepared.class_names == ["Tumor", "Cyst"] and prepared.splits == {"train": "tumor_train"}
    defects = split_report(validate_splits(prepared))["train"]["defects"]
    assert defects == {"unused_category": 1, "duplicate_category_name": 1, "rare_category": 1}
    kept = dataset_splits(export, tmp_path / "kept", keep_placeholder=True)
    assert kept.class_names == ["Tumor", "Tumor", "Cyst"]
