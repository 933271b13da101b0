"""Validation finds each injected defect with the right count; fixing writes a new file and
never changes the user's; the real BCCD export is reported as it is."""

import copy
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED_DATASETS
from d2nb.cli import main as cli_main
from d2nb.data.validate import ISSUE_KINDS, fix_coco, read_image_size, validate_coco
from d2nb.errors import D2nbError

BCCD = SHARED_DATASETS / "bccd"
HEIGHT, WIDTH = 60, 80


def clean_coco(masks=True, num_images=6) -> dict:
    """Six 60x80 images, two annotations each (a square and a triangle), categories 1-3
    all used."""
    images, annotations = [], []
    for index in range(num_images):
        images.append({"id": index + 1, "file_name": f"{index:03d}.png", "height": HEIGHT, "width": WIDTH})
        for number, (x, y) in enumerate(((5, 5), (40, 20))):
            square = [x, y, x + 20, y, x + 20, y + 20, x, y + 20]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": 1 + (index + number) % 3, "bbox": [x, y, 20, 20], "area": 400.0,
                                "segmentation": [square] if masks else [], "iscrowd": 0})
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in ((1, "cat"), (2, "dog"), (3, "bird"))]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def write_dataset(folder: Path, coco: dict) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        path = folder / "images" / image["file_name"]
        if not path.exists():
            cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))
    json_file = folder / "annotations.json"
    json_file.write_text(json.dumps(coco))
    return json_file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_clean_dataset_has_no_issue(tmp_path):
    json_file = write_dataset(tmp_path, clean_coco())
    report = validate_coco(json_file, tmp_path / "images")
    assert report.ok and not any(report.counts.values())
    assert (report.num_images, report.num_annotations, report.has_masks) == (6, 12, True)
    assert "No issues" in str(report) and "No issues" in report._repr_html_()


def _delete_files(folder, coco):
    for image in coco["images"][:2]:
        (folder / "images" / image["file_name"]).unlink()


def _garble_files(folder, coco):
    for image in coco["images"][:2]:
        (folder / "images" / image["file_name"]).write_bytes(b"this is not a picture")


def _odd_polygons(coco):
    for annotation in coco["annotations"][:2]:
        annotation["segmentation"] = [annotation["segmentation"][0] + [1.0]]


# kind -> (how to inject it into clean_coco(), how many); a files step gets (folder, coco)
DEFECTS = {
    "missing_image": (_delete_files, 2),
    "unreadable_image": (_garble_files, 2),
    "image_size_missing": (lambda coco: coco["images"][0].pop("height"), 1),
    "size_mismatch": (lambda coco: [image.update(height=61) for image in coco["images"][:3]], 3),
    "duplicate_image_id": (lambda coco: coco["images"][1].update(id=1), 1),
    "duplicate_annotation_id": (lambda coco: [a.update(id=1) for a in coco["annotations"][1:4]], 3),
    "duplicate_category_id": (lambda coco: coco["categories"].append({"id": 2, "name": "dog again"}), 1),
    "unknown_category": (lambda coco: [a.update(category_id=7) for a in coco["annotations"][:2]], 2),
    "annotation_without_image": (lambda coco: [coco["annotations"][i].update(image_id=99) for i in (0, 2)], 2),
    "malformed_box": (lambda coco: (coco["annotations"][0].update(bbox=[1, 2, 3]),
                                    coco["annotations"][1].pop("bbox")), 2),
    "empty_box": (lambda coco: (coco["annotations"][0]["bbox"].__setitem__(2, 0),
                                coco["annotations"][1]["bbox"].__setitem__(3, -4),
                                coco["annotations"][2]["bbox"].__setitem__(2, 0.0)), 3),
    "box_outside_image": (lambda coco: (coco["annotations"][0]["bbox"].__setitem__(0, -3),
                                        coco["annotations"][1]["bbox"].__setitem__(2, 70)), 2),
    "polygon_too_short": (lambda coco: [a.update(segmentation=[[1, 1, 5, 5]]) for a in coco["annotations"][:2]], 2),
    "polygon_odd_coordinates": (_odd_polygons, 2),
    "empty_segmentation": (lambda coco: [a.update(segmentation=[]) for a in coco["annotations"][:3]], 3),
    "image_without_annotations": (lambda coco: coco.update(
        annotations=[a for a in coco["annotations"] if a["image_id"] != 6]), 1),
    "unused_category": (lambda coco: coco["categories"].append({"id": 0, "name": "placeholder"}), 1),
    "duplicate_category_name": (lambda coco: coco["categories"][2].update(name="cat"), 1),
    "rare_category": (lambda coco: None, 3),  # 4 instances of each class, min_instances=5 below
}
MIN_INSTANCES = {"rare_category": 5}


def test_every_issue_kind_has_an_injection():
    assert set(DEFECTS) == set(ISSUE_KINDS)


@pytest.mark.parametrize("kind", list(DEFECTS))
def test_each_injected_defect_is_found_with_its_count(tmp_path, kind):
    inject, count = DEFECTS[kind]
    coco = clean_coco()
    json_file = write_dataset(tmp_path, coco)
    if inject in (_delete_files, _garble_files):
        inject(tmp_path, coco)
    else:
        inject(coco)
        json_file.write_text(json.dumps(coco))
    report = validate_coco(json_file, tmp_path / "images", min_instances=MIN_INSTANCES.get(kind, 0))
    assert report.counts[kind] == count, report.examples
    assert len(report.examples[kind]) == count and len(report.indices[kind]) == count
    row = [r for r in report.rows() if r["issue"] == kind][0]
    assert row["count"] == count and row["severity"] == ISSUE_KINDS[kind].severity
    # image 2 taking image 1's id leaves image 2's two annotations without an image
    expected_others = {"annotation_without_image": 2} if kind == "duplicate_image_id" else {}
    assert {k: n for k, n in report.counts.items() if n and k != kind} == expected_others


def test_empty_segmentations_count_only_when_masks_are_trained(tmp_path):
    json_file = write_dataset(tmp_path, clean_coco(masks=False))
    assert validate_coco(json_file, tmp_path / "images").counts["empty_segmentation"] == 0
    report = validate_coco(json_file, tmp_path / "images", expect_masks=True)
    assert report.counts["empty_segmentation"] == 12 and not report.ok


def test_image_sizes_come_from_the_header_with_exif_rotation(tmp_path):
    from PIL import Image

    picture = Image.new("RGB", (40, 30))
    exif = picture.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: detectron2 sees 40 high, 30 wide
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image_size(tmp_path / "rotated.jpg") == (40, 30)
    picture.save(tmp_path / "plain.png")
    assert read_image_size(tmp_path / "plain.png") == (30, 40)


def many_defects(tmp_path) -> Path:
    coco = clean_coco()
    json_file = write_dataset(tmp_path, coco)
    _delete_files(tmp_path, coco)                                  # images 1, 2 gone (4 annotations)
    coco["images"][2]["height"] = 59                               # size from the file: 60
    coco["annotations"][4]["bbox"] = [-3, 10, 20, 20]              # clipped to [0, 10, 17, 20]
    coco["annotations"][5]["bbox"] = [70, 50, 30, 30]              # clipped to [70, 50, 10, 10]
    coco["annotations"][6]["bbox"][2] = 0                          # dropped
    coco["annotations"][7]["category_id"] = 9                      # dropped
    coco["annotations"][8]["id"] = coco["annotations"][9]["id"]    # renumbered
    coco["annotations"][10]["segmentation"].append([1, 2, 3])      # broken part removed
    coco["annotations"][11]["segmentation"] = []                   # dropped (masks are trained)
    coco["categories"].append({"id": 0, "name": "placeholder"})
    json_file.write_text(json.dumps(coco))
    return json_file


def test_fix_writes_a_new_json_and_never_changes_the_original(tmp_path):
    json_file = many_defects(tmp_path)
    before = sha256(json_file)
    report = validate_coco(json_file, tmp_path / "images")
    assert not report.ok
    fixed = fix_coco(report, tmp_path / "out" / "fixed.json", drop_unused_categories=True)
    assert sha256(json_file) == before
    coco = json.loads(fixed.json_file.read_text())
    assert len(coco["images"]) == 4 and coco["images"][0]["height"] == 60
    boxes = {a["id"]: a["bbox"] for a in coco["annotations"]}
    assert boxes[5] == [0.0, 10.0, 17.0, 20.0] and boxes[6] == [70.0, 50.0, 10.0, 10.0]
    assert sorted(boxes) == [5, 6, 10, 11, 13]  # 7, 8, 12 dropped; the later id 10 is now 13
    assert len(coco["annotations"]) == 5
    assert [a for a in coco["annotations"] if a["id"] == 11][0]["segmentation"] == [[5, 5, 25, 5, 25, 25, 5, 25]]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    after = validate_coco(fixed.json_file, tmp_path / "images")
    # image 4 lost both its annotations (empty box, undeclared category): a note, not an error
    assert {k: n for k, n in after.counts.items() if n} == {"image_without_annotations": 1}, after.examples
    again = fix_coco(after, tmp_path / "out" / "fixed_again.json", drop_images_without_annotations=True)
    assert not any(validate_coco(again.json_file, tmp_path / "images").counts.values())
    assert fixed.changes["annotations dropped with their image"] == 4
    assert "boxes clipped to the image" in str(fixed)


def test_fix_from_a_path_and_the_refusals(tmp_path):
    json_file = many_defects(tmp_path)
    before = sha256(json_file)
    fixed = fix_coco(json_file, tmp_path / "fixed.json", image_root=tmp_path / "images", clip_boxes=False)
    assert validate_coco(fixed.json_file, tmp_path / "images").counts["box_outside_image"] == 2
    with pytest.raises(D2nbError, match="is the annotation file it is made from") as error:
        fix_coco(json_file, json_file, image_root=tmp_path / "images")
    assert "Fix:" in str(error.value)
    assert sha256(json_file) == before


def test_bccd_report_matches_what_the_data_holds():
    json_file = BCCD / "train" / "_annotations.coco.json"
    raw = json.loads(json_file.read_text())
    report = validate_coco(json_file)
    assert report.images_checked and report.ok and report.count("warning") == 0
    assert (report.num_images, report.num_annotations) == (len(raw["images"]), len(raw["annotations"]))
    assert len(report.categories) == 3
    assert report.unused_category_ids == [0] and report.counts["unused_category"] == 1
    assert report.examples["unused_category"] == ["category id 0 ('RBC-WBC')"]
    assert not report.has_masks and report.num_polygon_annotations == 0
    assert {c["name"]: c["instances"] for c in report.categories} == {
        "RBC-WBC": 0, "rbc": sum(a["category_id"] == 1 for a in raw["annotations"]),
        "wbc": sum(a["category_id"] == 2 for a in raw["annotations"])}
    summary = json.loads(json.dumps(report.summary()))
    assert summary["counts"]["unused_category"] == 1 and summary["ok"] is True


def test_report_renders_as_table_and_json(tmp_path):
    json_file = many_defects(tmp_path)
    report = validate_coco(json_file, tmp_path / "images")
    table = report.to_frame()
    rows = table.rows if hasattr(table, "rows") else table.to_dict("records")
    assert rows[0]["severity"] == "error" and {r["issue"] for r in rows} >= {"missing_image", "empty_box"}
    assert "missing_image" in report._repr_html_()
    saved = json.loads(report.save(tmp_path / "report.json").read_text())
    assert saved["counts"]["missing_image"] == 2 and saved["ok"] is False


def test_bad_sources_name_the_value_and_the_fix(tmp_path):
    with pytest.raises(D2nbError, match="does not exist") as error:
        validate_coco(tmp_path / "nope.json")
    assert "nope.json" in str(error.value) and "Fix:" in str(error.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(D2nbError, match="not a COCO instances file"):
        validate_coco(tmp_path / "list.json")
    with pytest.raises(D2nbError, match="neither a COCO json file nor a registered dataset name"):
        validate_coco("no_such_dataset_name")
    json_file = write_dataset(tmp_path, clean_coco())
    with pytest.raises(D2nbError, match="image folder .*pictures' does not exist") as error:
        validate_coco(json_file, tmp_path / "pictures")
    assert "check_images=False" in str(error.value)
    assert validate_coco(json_file, tmp_path / "pictures", check_images=False).images_checked is False


def test_cli_validate_reports_and_fixes(tmp_path, capsys):
    json_file = many_defects(tmp_path)
    before = sha256(json_file)
    images = str(tmp_path / "images")
    assert cli_main(["data", "validate", str(json_file), "--image-root", images]) == 1
    assert "missing_image" in capsys.readouterr().out
    assert cli_main(["data", "validate", str(json_file), "--image-root", images, "--fix", str(tmp_path / "f.json"),
                     "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["empty_box"] == 1
    assert sha256(json_file) == before


def test_fixed_sizes_clip_the_boxes_of_that_image(tmp_path):
    coco = clean_coco(masks=False)
    json_file = write_dataset(tmp_path, coco)
    cv2.imwrite(str(tmp_path / "images" / "000.png"), np.zeros((30, 80, 3), np.uint8))  # the file is 30 high
    report = validate_coco(json_file, tmp_path / "images")
    assert report.counts["size_mismatch"] == 1 and report.counts["box_outside_image"] == 0
    fixed = fix_coco(report, tmp_path / "fixed.json")
    coco = json.loads(fixed.json_file.read_text())
    assert coco["images"][0]["height"] == 30
    assert [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1] == [[5, 5, 20, 20], [40.0, 20.0, 20.0, 10.0]]
    assert [a["area"] for a in coco["annotations"] if a["image_id"] == 1] == [400.0, 200.0]
    assert not any(validate_coco(fixed.json_file, tmp_path / "images").counts.values())
