"""Registration re-runs safely, follows changed files, and reads Roboflow exports as they are."""

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import SHARED_DATASETS
from d2nb.data import resolve_dataset
from d2nb.data.register import register_coco_json, register_roboflow_folder, write_coco_json
from d2nb.errors import D2nbError

BCCD = SHARED_DATASETS / "bccd"


def tiny_dataset(folder, num_images, names=("a", "b")):
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        cv2.imwrite(str(folder / f"{index}.png"), np.zeros((20, 20, 3), np.uint8))
        images.append({"id": index + 1, "file_name": f"{index}.png", "height": 20, "width": 20})
        annotations.append({"id": index + 1, "image_id": index + 1, "category_id": 1, "bbox": [1, 1, 5, 5],
                            "area": 25, "iscrowd": 0, "segmentation": []})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    return folder / "annotations.json"


def test_registering_again_is_a_no_op_and_other_files_replace_it(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    first = tiny_dataset(tmp_path / "first", 3)
    second = tiny_dataset(tmp_path / "second", 5, names=("x", "y", "z"))
    register_coco_json("d2nb_test_reregister", first)
    loader = DatasetCatalog["d2nb_test_reregister"]
    register_coco_json("d2nb_test_reregister", first)
    assert DatasetCatalog["d2nb_test_reregister"] is loader  # untouched
    register_coco_json("d2nb_test_reregister", second)
    assert MetadataCatalog.get("d2nb_test_reregister").json_file == str(second.resolve())
    assert MetadataCatalog.get("d2nb_test_reregister").thing_classes == ["x", "y", "z"]
    assert len(DatasetCatalog.get("d2nb_test_reregister")) == 5
    # same path, categories changed in the file: the class names follow
    coco = json.loads(second.read_text())
    coco["categories"] = [{"id": 1, "name": "renamed"}]
    second.write_text(json.dumps(coco))
    register_coco_json("d2nb_test_reregister", second)
    assert MetadataCatalog.get("d2nb_test_reregister").thing_classes == ["renamed"]
    assert len(DatasetCatalog.get("d2nb_test_reregister")) == 5


def test_a_roboflow_export_registers_each_split_with_its_placeholder_category():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = register_roboflow_folder(BCCD)
    assert names == {"train": "bccd_train", "valid": "bccd_valid", "test": "bccd_test"}
    raw = json.loads((BCCD / "train" / "_annotations.coco.json").read_text())
    meta = MetadataCatalog.get("bccd_train")
    assert meta.thing_classes == ["RBC-WBC", "rbc", "wbc"]  # class index = json category order
    assert meta.thing_dataset_id_to_contiguous_id == {0: 0, 1: 1, 2: 2}
    records = DatasetCatalog.get("bccd_train")
    assert len(records) == len(raw["images"])
    loaded = [a for r in records for a in r["annotations"]]
    assert len(loaded) == len(raw["annotations"])
    assert all("segmentation" not in a for a in loaded)  # empty lists load as boxes
    assert sum(a["category_id"] == 1 for a in loaded) == sum(a["category_id"] == 1 for a in raw["annotations"])
    assert sum(a["category_id"] == 2 for a in loaded) == sum(a["category_id"] == 2 for a in raw["annotations"])
    assert all(r["file_name"].startswith(str((BCCD / "train").resolve())) for r in records)


def test_resolve_dataset_on_a_roboflow_folder_and_its_json():
    choice = resolve_dataset(str(BCCD))
    assert (choice.train, choice.val, choice.has_masks) == ("bccd_train", "bccd_valid", False)
    assert choice.class_names == ["rbc", "wbc"]  # Roboflow's placeholder id 0 'RBC-WBC' left out
    from detectron2.data import DatasetCatalog, MetadataCatalog

    assert MetadataCatalog.get("bccd_train").thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert len(DatasetCatalog.get("bccd_train")) == 210
    kept = resolve_dataset(str(BCCD), keep_placeholder=True)
    assert kept.class_names == ["RBC-WBC", "rbc", "wbc"]
    single = resolve_dataset(str(BCCD / "test" / "_annotations.coco.json"))
    assert single.train == "test" and not single.has_masks and single.class_names == ["rbc", "wbc"]


def test_a_roboflow_folder_moved_elsewhere_is_registered_at_its_new_place(tmp_path):
    from detectron2.data import MetadataCatalog

    copy = tmp_path / "bccd"
    shutil.copytree(BCCD / "valid", copy / "train")
    register_roboflow_folder(copy)
    assert MetadataCatalog.get("bccd_train").json_file == str((copy / "train" / "_annotations.coco.json").resolve())
    register_roboflow_folder(BCCD)
    assert MetadataCatalog.get("bccd_train").json_file == str((BCCD / "train" / "_annotations.coco.json").resolve())


def test_write_coco_json_never_overwrites_its_source(tmp_path):
    source = tiny_dataset(tmp_path, 1)
    before = source.read_bytes()
    with pytest.raises(D2nbError, match="is the annotation file it is made from"):
        write_coco_json({"images": []}, source, source_json=source)
    assert source.read_bytes() == before
    written = write_coco_json({"images": []}, tmp_path / "deep" / "new.json", source_json=source)
    assert json.loads(written.read_text()) == {"images": []}
    assert [p.name for p in written.parent.iterdir()] == ["new.json"]  # no temporary left
