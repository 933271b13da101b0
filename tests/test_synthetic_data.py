import hashlib
import json
from pathlib import Path

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2nb.data import CLASS_NAMES, SYNTHETIC_TRAIN, SYNTHETIC_VAL, SyntheticSpec, make_synthetic_dataset, register_synthetic

SMALL = SyntheticSpec(num_train=12, num_val=4, seed=3)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a = make_synthetic_dataset(SMALL, tmp_path / "a")
    b = make_synthetic_dataset(SMALL, tmp_path / "b")
    c = make_synthetic_dataset(SyntheticSpec(num_train=12, num_val=4, seed=4), tmp_path / "c")
    folder = lambda splits: Path(splits["train"][0]).parent
    assert _digest(folder(a)) == _digest(folder(b))
    assert _digest(folder(a)) != _digest(folder(c))


def test_coco_json_is_well_formed(tmp_path):
    splits = make_synthetic_dataset(SMALL, tmp_path)
    coco = json.loads(Path(splits["train"][0]).read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert len(coco["images"]) == 12
    image_ids = {i["id"] for i in coco["images"]}
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for ann in coco["annotations"]:
        assert ann["image_id"] in image_ids
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128.01 and y + h <= 128.01
        assert ann["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        assert ann["area"] > 0
    for image in coco["images"]:
        assert (Path(splits["train"][1]) / image["file_name"]).is_file()


def test_shapes_vary_in_class_size_and_overlap(tmp_path):
    splits = make_synthetic_dataset(SyntheticSpec(num_train=60, num_val=1), tmp_path)
    coco = json.loads(Path(splits["train"][0]).read_text())
    anns = coco["annotations"]
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    areas = np.array([a["area"] for a in anns])
    assert areas.max() > 8 * areas.min()
    # some shapes are partly hidden: their mask comes from the visible region's contours
    assert any(len(a["segmentation"][0]) not in (6, 8, 20, 64) for a in anns)


def test_registered_splits_load_through_datasetcatalog():
    choice = register_synthetic(SyntheticSpec(num_train=12, num_val=4, seed=5))
    assert (choice.train, choice.val) == (SYNTHETIC_TRAIN, SYNTHETIC_VAL)
    records = DatasetCatalog.get(SYNTHETIC_TRAIN)
    assert len(records) == 12 and all(r["annotations"] for r in records)
    assert MetadataCatalog.get(SYNTHETIC_VAL).thing_classes == list(CLASS_NAMES)
    assert len(DatasetCatalog.get(SYNTHETIC_VAL)) == 4


def test_each_annotation_covers_exactly_the_pixels_its_shape_was_painted_on():
    """The ground truth as COCOeval rasterises it (pycocotools) is the painted shape: every
    pixel inside is the shape's one colour, and the ring of pixels just outside is not."""
    import cv2
    from pycocotools import mask as mask_util

    from d2nb.data.synthetic import draw_scene

    inside_wrong = ring_same = ring_total = instances = 0
    for index in range(60):
        image, shapes = draw_scene(np.random.default_rng([7, index]), 128, 128, 5)
        rasters = []
        for _, polygons, (x, y, w, h), area in shapes:
            raster = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, 128, 128))).astype(bool)
            assert raster.sum() == area and raster.any()
            ys, xs = np.nonzero(raster)
            assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
            colours = np.unique(image[raster], axis=0)
            inside_wrong += len(colours) != 1
            ring = cv2.dilate(raster.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~raster
            ring_same += int((image[ring] == colours[0]).all(axis=1).sum())
            ring_total += int(ring.sum())
            rasters.append(raster)
            instances += 1
        assert (np.sum(rasters, axis=0) <= 1).all()  # the visible parts of the shapes are disjoint
    assert instances > 150 and inside_wrong == 0
    assert ring_same < 0.01 * ring_total, (ring_same, ring_total)
