"""Converters to COCO: boxes written in each format from known COCO boxes come back exactly."""

import json

import cv2
import numpy as np
import pytest

from d2nb.cli import main as cli_main
from d2nb.data.convert import labelme_to_coco, read_class_names, voc_to_coco, yolo_to_coco
from d2nb.data.register import register_coco_json
from d2nb.data.validate import validate_coco
from d2nb.errors import D2nbError

# (file name, (height, width), [(class, [x, y, w, h])]): integers, halves, boxes on the border
KNOWN = [
    ("street.jpg", (480, 640), [("car", [0.0, 0.0, 10.0, 20.0]), ("person", [15.0, 7.5, 30.5, 12.0]),
                                ("car", [630.0, 475.0, 10.0, 5.0])]),
    ("park.png", (333, 517), [("dog", [100.0, 200.0, 50.0, 33.0]), ("person", [0.5, 1.5, 516.5, 331.5])]),
    ("empty.jpg", (64, 96), []),
]


def write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (height, width), _ in KNOWN:
        cv2.imwrite(str(folder / file_name), np.full((height, width, 3), 90, np.uint8))


def expected_boxes():
    return {file_name: sorted((name, box) for name, box in objects) for file_name, _, objects in KNOWN}


def converted_boxes(json_file):
    coco = json.loads(json_file.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    found = {name: [] for name in files.values()}
    for annotation in coco["annotations"]:
        found[files[annotation["image_id"]]].append((names[annotation["category_id"]], annotation["bbox"]))
    return {name: sorted(boxes) for name, boxes in found.items()}


def write_voc(folder, with_size=True):
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, (height, width), objects in KNOWN:
        size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if with_size else ""
        # VOC corners are 1-based inclusive pixel indices: xmin = x + 1, xmax = x + w
        boxes = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x + 1:g}</xmin>"
                        f"<ymin>{y + 1:g}</ymin><xmax>{x + w:g}</xmax><ymax>{y + h:g}</ymax></bndbox></object>"
                        for name, (x, y, w, h) in objects)
        (folder / f"{file_name.rsplit('.', 1)[0]}.xml").write_text(
            f"<annotation><folder>VOC</folder><filename>{file_name}</filename>{size}{boxes}</annotation>")


def test_voc_boxes_round_trip_exactly(tmp_path):
    write_voc(tmp_path / "VOC" / "Annotations")
    write_images(tmp_path / "VOC" / "JPEGImages")
    output = voc_to_coco(tmp_path / "VOC" / "Annotations", tmp_path / "voc.json")
    assert converted_boxes(output) == expected_boxes()
    coco = json.loads(output.read_text())
    assert [c["name"] for c in coco["categories"]] == ["car", "dog", "person"]
    assert {(i["file_name"], i["height"], i["width"]) for i in coco["images"]} == \
        {(f, h, w) for f, (h, w), _ in KNOWN}
    report = validate_coco(output, tmp_path / "VOC" / "JPEGImages")
    assert report.ok and report.count("warning") == 0 and not report.has_masks


def test_voc_without_sizes_reads_them_from_the_images(tmp_path):
    write_voc(tmp_path / "VOC" / "Annotations", with_size=False)
    write_images(tmp_path / "VOC" / "JPEGImages")
    output = voc_to_coco(tmp_path / "VOC" / "Annotations", tmp_path / "voc.json", class_names=["person", "car", "dog"])
    coco = json.loads(output.read_text())
    assert {(i["file_name"], i["height"], i["width"]) for i in coco["images"]} == {(f, h, w) for f, (h, w), _ in KNOWN}
    assert [c["name"] for c in coco["categories"]] == ["person", "car", "dog"]
    assert converted_boxes(output) == expected_boxes()


def write_labelme(folder, with_polygon=True):
    folder.mkdir(parents=True, exist_ok=True)
    for index, (file_name, (height, width), objects) in enumerate(KNOWN):
        shapes = []
        for number, (name, (x, y, w, h)) in enumerate(objects):
            corners = [[x, y], [x + w, y + h]] if number % 2 == 0 else [[x + w, y + h], [x, y]]  # either order
            shapes.append({"label": name, "points": corners, "shape_type": "rectangle", "group_id": None, "flags": {}})
        if with_polygon and index == 0:
            shapes.append({"label": "dog", "points": [[5, 5], [25.5, 5], [25.5, 30], [5, 30], [12, 17.25]],
                           "shape_type": "polygon"})
            shapes.append({"label": "dog", "points": [[1, 1]], "shape_type": "point"})  # skipped
        (folder / f"{file_name.rsplit('.', 1)[0]}.json").write_text(json.dumps(
            {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": file_name, "imageData": None,
             "imageHeight": height, "imageWidth": width}))


def test_labelme_rectangles_and_polygons_round_trip(tmp_path):
    write_labelme(tmp_path / "labelme")
    write_images(tmp_path / "labelme")
    with pytest.warns(UserWarning, match="point"):
        output = labelme_to_coco(tmp_path / "labelme", tmp_path / "labelme.json")
    expected = expected_boxes()
    expected["street.jpg"] = sorted(expected["street.jpg"] + [("dog", [5.0, 5.0, 20.5, 25.0])])
    assert converted_boxes(output) == expected
    coco = json.loads(output.read_text())
    polygon = [a for a in coco["annotations"] if a["bbox"] == [5.0, 5.0, 20.5, 25.0]][0]
    assert polygon["segmentation"] == [[5, 5, 25.5, 5, 25.5, 30, 5, 30, 12, 17.25]]
    # with polygons in the folder, rectangles carry a 4-corner mask so that mask training works
    rectangle = [a for a in coco["annotations"] if a["bbox"] == [15.0, 7.5, 30.5, 12.0]][0]
    assert rectangle["segmentation"] == [[15.0, 7.5, 45.5, 7.5, 45.5, 19.5, 15.0, 19.5]]
    assert rectangle["area"] == 30.5 * 12.0
    report = validate_coco(output, tmp_path / "labelme")
    assert report.ok and report.has_masks and report.counts["empty_segmentation"] == 0


def test_labelme_rectangles_only_stay_boxes(tmp_path):
    write_labelme(tmp_path / "labelme", with_polygon=False)
    output = labelme_to_coco(tmp_path / "labelme", tmp_path / "labelme.json")
    assert converted_boxes(output) == expected_boxes()
    assert all(a["segmentation"] == [] for a in json.loads(output.read_text())["annotations"])


def write_yolo(images, labels, names, polygon=False):
    labels.mkdir(parents=True, exist_ok=True)
    for file_name, (height, width), objects in KNOWN:
        lines = [f"{names.index(name)} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                 f"{w / width:.6f} {h / height:.6f}" for name, (x, y, w, h) in objects]
        if polygon and file_name == "park.png":
            lines.append(f"0 {10 / width:.6f} {20 / height:.6f} {40 / width:.6f} {20 / height:.6f} "
                         f"{40 / width:.6f} {60.5 / height:.6f}")
        if objects or polygon:
            (labels / f"{file_name.rsplit('.', 1)[0]}.txt").write_text("\n".join(lines) + "\n")
    write_images(images)


def test_yolo_boxes_round_trip_exactly(tmp_path):
    names = ["person", "car", "dog"]
    write_yolo(tmp_path / "images", tmp_path / "labels", names)
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    output = yolo_to_coco(tmp_path / "images", tmp_path / "labels", tmp_path / "yolo.json", tmp_path / "classes.txt",
                          decimals=2)
    assert converted_boxes(output) == expected_boxes()
    coco = json.loads(output.read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "person"), (2, "car"), (3, "dog")]
    report = validate_coco(output, tmp_path / "images")
    assert report.ok and report.counts["image_without_annotations"] == 1  # empty.jpg has no label file


def test_yolo_polygons_and_data_yaml(tmp_path):
    names = ["person", "car", "dog"]
    write_yolo(tmp_path / "images", tmp_path / "labels", names, polygon=True)
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: person\n  1: car\n  2: dog\n")
    assert read_class_names(tmp_path / "data.yaml") == names
    output = yolo_to_coco(tmp_path / "images", tmp_path / "labels", tmp_path / "yolo.json", tmp_path / "data.yaml",
                          decimals=2)
    coco = json.loads(output.read_text())
    polygons = [a for a in coco["annotations"] if a["segmentation"]]
    assert len(polygons) == 1
    assert polygons[0]["segmentation"] == [[10.0, 20.0, 40.0, 20.0, 40.0, 60.5]]
    assert polygons[0]["bbox"] == [10.0, 20.0, 30.0, 40.5]
    assert polygons[0]["area"] == pytest.approx(0.5 * 30.0 * 40.5)


def test_converted_dataset_loads_in_detectron2(tmp_path):
    from detectron2.data import DatasetCatalog

    write_voc(tmp_path / "VOC" / "Annotations")
    write_images(tmp_path / "VOC" / "JPEGImages")
    output = voc_to_coco(tmp_path / "VOC" / "Annotations", tmp_path / "voc.json")
    register_coco_json("d2nb_test_voc_converted", output, tmp_path / "VOC" / "JPEGImages")
    records = DatasetCatalog.get("d2nb_test_voc_converted")
    assert sum(len(r["annotations"]) for r in records) == sum(len(o) for _, _, o in KNOWN)


def test_bad_inputs_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(D2nbError, match="no .xml files") as error:
        voc_to_coco(tmp_path, tmp_path / "out.json")
    assert str(tmp_path) in str(error.value) and "Fix:" in str(error.value)
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(D2nbError, match="broken.xml"):
        voc_to_coco(tmp_path, tmp_path / "out.json")
    names = ["person", "car", "dog"]
    write_yolo(tmp_path / "images", tmp_path / "labels", names)
    with pytest.raises(D2nbError, match=r"park.txt:1: class 2 but only 1 class names"):
        yolo_to_coco(tmp_path / "images", tmp_path / "labels", tmp_path / "out.json", ["person"])
    write_labelme(tmp_path / "labelme", with_polygon=False)
    with pytest.raises(D2nbError, match=r"classes \['dog'\] found"):
        labelme_to_coco(tmp_path / "labelme", tmp_path / "out.json", class_names=["car", "person"])
    with pytest.raises(D2nbError, match="neither a list nor an existing file"):
        read_class_names(tmp_path / "missing_classes.txt")
    assert not (tmp_path / "out.json").exists()


def test_cli_convert(tmp_path, capsys):
    names = ["person", "car", "dog"]
    write_yolo(tmp_path / "images", tmp_path / "labels", names)
    output = tmp_path / "cli.json"
    assert cli_main(["data", "convert", "yolo", str(tmp_path / "labels"), str(output),
                     "--images", str(tmp_path / "images"), "--classes", *names, "--decimals", "2"]) == 0
    assert converted_boxes(output) == expected_boxes()
    assert cli_main(["data", "convert", "yolo", str(tmp_path / "labels"), str(output)]) == 2
    assert "--images" in capsys.readouterr().err
