"""Subsets and train/val splits keep ids consistent; the builtin ``*_val_100`` names load."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from d2nb.cli import main as cli_main
from d2nb.data.subset import make_builtin_subset, make_subset, split_train_val
from d2nb.errors import D2nbError

NUM_IMAGES = 120


@pytest.fixture(scope="module")
def fake_coco_root(tmp_path_factory):
    """$DETECTRON2_DATASETS-style folder with coco/val2017 (tiny PNGs) and COCO-shaped
    instances_val2017.json and person_keypoints_val2017.json (COCO's own categories)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, COCO_PERSON_KEYPOINT_NAMES

    root = tmp_path_factory.mktemp("fake_datasets")
    (root / "coco" / "val2017").mkdir(parents=True)
    (root / "coco" / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, instances, keypoints = [], [], []
    for index in range(NUM_IMAGES):
        image_id = 1000 + 7 * index  # ids that are not positions
        file_name = f"{image_id:012d}.png"
        cv2.imwrite(str(root / "coco" / "val2017" / file_name), np.zeros((32, 48, 3), np.uint8))
        images.append({"id": image_id, "file_name": file_name, "height": 32, "width": 48})
        for _ in range(int(rng.integers(0, 4))):
            x, y = float(rng.integers(0, 30)), float(rng.integers(0, 15))
            annotation = {"id": 50_000 + len(instances), "image_id": image_id, "bbox": [x, y, 10.0, 10.0],
                          "area": 100.0, "iscrowd": 0,
                          "segmentation": [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]]}
            instances.append({**annotation, "category_id": int(rng.choice([1, 3, 18, 90]))})
            points = [v for k in range(17) for v in (x + k % 10, y + k % 10, 2)]
            keypoints.append({**annotation, "category_id": 1, "keypoints": points, "num_keypoints": 17})
    things = [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in COCO_CATEGORIES if c["isthing"]]
    person = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
               "skeleton": [[16, 14], [14, 12]]}]
    for name, annotations, categories in (("instances_val2017.json", instances, things),
                                          ("person_keypoints_val2017.json", keypoints, person)):
        coco = {"info": {"description": "fake"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": categories}
        (root / "coco" / "annotations" / name).write_text(json.dumps(coco))
    return root


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def check_consistent(subset: dict, full: dict):
    kept = {image["id"] for image in subset["images"]}
    assert subset["categories"] == full["categories"]
    assert subset["annotations"] == [a for a in full["annotations"] if a["image_id"] in kept]
    by_id = {image["id"]: image for image in full["images"]}
    assert all(by_id[image["id"]] == image for image in subset["images"])


def test_first_n_images_keep_their_ids_and_annotations(fake_coco_root, tmp_path):
    source = fake_coco_root / "coco" / "annotations" / "instances_val2017.json"
    full = load(source)
    subset = load(make_subset(source, tmp_path / "first.json", 10))
    assert subset["images"] == full["images"][:10]
    assert subset["info"] == full["info"] and subset["licenses"] == []
    check_consistent(subset, full)


def test_random_subsets_follow_the_seed(fake_coco_root, tmp_path):
    source = fake_coco_root / "coco" / "annotations" / "instances_val2017.json"
    full = load(source)
    one = load(make_subset(source, tmp_path / "a.json", 25, "random", seed=3))
    again = load(make_subset(source, tmp_path / "b.json", 25, "random", seed=3))
    other = load(make_subset(source, tmp_path / "c.json", 25, "random", seed=4))
    assert one == again and one["images"] != other["images"] and len(one["images"]) == 25
    order = [image["id"] for image in full["images"]]
    assert [order.index(i["id"]) for i in one["images"]] == sorted(order.index(i["id"]) for i in one["images"])
    check_consistent(one, full)
    assert len(load(make_subset(source, tmp_path / "all.json", 10_000))["images"]) == NUM_IMAGES


def test_train_val_split_is_a_seeded_partition(fake_coco_root, tmp_path):
    source = fake_coco_root / "coco" / "annotations" / "instances_val2017.json"
    full = load(source)
    train_path, val_path = split_train_val(source, tmp_path / "train.json", tmp_path / "val.json", 0.25, seed=1)
    train, val = load(train_path), load(val_path)
    train_ids, val_ids = {i["id"] for i in train["images"]}, {i["id"] for i in val["images"]}
    assert len(val_ids) == 30 and len(train_ids) == 90 and not train_ids & val_ids
    assert train_ids | val_ids == {i["id"] for i in full["images"]}
    assert len(train["annotations"]) + len(val["annotations"]) == len(full["annotations"])
    check_consistent(train, full)
    check_consistent(val, full)
    split_train_val(source, tmp_path / "t2.json", tmp_path / "v2.json", 0.25, seed=1)
    assert load(tmp_path / "v2.json") == val


def test_builtin_val_100_names_load_from_where_detectron2_expects(fake_coco_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    annotations = fake_coco_root / "coco" / "annotations"
    assert make_builtin_subset("coco_2017_val", 100, root=fake_coco_root) == "coco_2017_val_100"
    assert make_builtin_subset("keypoints_coco_2017_val", 100, root=fake_coco_root) == "keypoints_coco_2017_val_100"
    instances = load(annotations / "instances_val2017_100.json")
    keypoints = load(annotations / "person_keypoints_val2017_100.json")
    assert [i["id"] for i in instances["images"]] == [i["id"] for i in keypoints["images"]]
    assert len(instances["images"]) == 100
    meta = MetadataCatalog.get("coco_2017_val_100")
    assert Path(meta.json_file) == (annotations / "instances_val2017_100.json").resolve()
    assert len(meta.thing_classes) == 80
    records = DatasetCatalog.get("coco_2017_val_100")
    assert len(records) == 100
    assert sum(len(r["annotations"]) for r in records) == len(instances["annotations"])
    people = DatasetCatalog.get("keypoints_coco_2017_val_100")
    assert sum(len(r["annotations"]) for r in people) == len(keypoints["annotations"]) > 0
    assert all(len(a["keypoints"]) == 51 for r in people for a in r["annotations"])
    assert len(MetadataCatalog.get("keypoints_coco_2017_val_100").keypoint_names) == 17
    assert make_builtin_subset("coco_2017_val", 10, root=fake_coco_root) == "coco_2017_val_10"
    assert len(DatasetCatalog.get("coco_2017_val_10")) == 10


def test_bad_subset_requests_say_what_to_pass(fake_coco_root, tmp_path):
    source = fake_coco_root / "coco" / "annotations" / "instances_val2017.json"
    with pytest.raises(D2nbError, match="positive whole number"):
        make_subset(source, tmp_path / "x.json", 0)
    with pytest.raises(D2nbError, match="selection 'middle'"):
        make_subset(source, tmp_path / "x.json", 5, selection="middle")
    with pytest.raises(D2nbError, match="val_fraction=1.5"):
        split_train_val(source, tmp_path / "t.json", tmp_path / "v.json", 1.5)
    with pytest.raises(D2nbError, match="is the annotation file it is made from"):
        make_subset(source, source, 5)
    with pytest.raises(D2nbError, match="not one of detectron2's builtin COCO datasets") as error:
        make_builtin_subset("coco_2099_val", 100, root=fake_coco_root)
    assert "coco_2017_val" in str(error.value)
    with pytest.raises(D2nbError, match="instances_train2017.json") as error:
        make_builtin_subset("coco_2017_train", 100, root=fake_coco_root)
    assert "d2nb data download" in str(error.value)
    assert not (tmp_path / "x.json").exists()


def test_cli_subset_and_split(fake_coco_root, tmp_path, capsys):
    source = str(fake_coco_root / "coco" / "annotations" / "instances_val2017.json")
    assert cli_main(["data", "subset", source, str(tmp_path / "s.json"), "--num-images", "7", "--random"]) == 0
    assert len(load(tmp_path / "s.json")["images"]) == 7
    assert cli_main(["data", "split", source, str(tmp_path / "t.json"), str(tmp_path / "v.json"),
                     "--val-fraction", "0.5"]) == 0
    assert len(load(tmp_path / "v.json")["images"]) == 60
    assert cli_main(["data", "subset", "--builtin", "coco_2017_val", "--num-images", "5",
                     "--root", str(fake_coco_root)]) == 0
    assert "coco_2017_val_5" in capsys.readouterr().out
