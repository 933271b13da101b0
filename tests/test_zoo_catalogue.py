"""The model-zoo picker's catalogue against the installed detectron2's own files."""

from pathlib import Path

import pytest
from detectron2 import model_zoo
from detectron2.model_zoo.model_zoo import _ModelZooUrls

from d2nb import zoo

INSTALLED_CONFIGS = Path(model_zoo.__file__).parent / "configs"


def installed_yaml_configs():
    return sorted(str(p.relative_to(INSTALLED_CONFIGS)) for p in INSTALLED_CONFIGS.rglob("*.yaml")
                  if not p.name.startswith("Base-"))


def test_every_shipped_yaml_is_listed():
    shipped = installed_yaml_configs()
    listed = {m.config for m in zoo.zoo_catalogue()}
    assert len(shipped) > 60
    assert set(shipped) <= listed
    assert not [c for c in listed if Path(c).name.startswith("Base-")]
    groups = {m.group for m in zoo.zoo_catalogue()}
    assert {"COCO-Detection", "COCO-InstanceSegmentation", "COCO-Keypoints", "COCO-PanopticSegmentation",
            "LVISv0.5-InstanceSegmentation", "Cityscapes", "PascalVOC-Detection", "Misc"} <= groups


def test_published_numbers_cover_every_model_zoo_md_table():
    # detectron2's URL table lists every released checkpoint; MODEL_ZOO.md has a table row for
    # each of them except the Detectron1-Comparisons configs, which it only links to.
    released = {key for key in _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX if not key.startswith("Detectron1-")}
    with_numbers = {Path(m.config).with_suffix("").as_posix() for m in zoo.zoo_catalogue() if m.numbers}
    assert released <= with_numbers
    for model in zoo.zoo_catalogue():
        if model.numbers:  # our table's URL is detectron2's own
            assert model.numbers["checkpoint_url"] == model.checkpoint_url == _ModelZooUrls.query(model.config)


@pytest.mark.parametrize("config, column, value", [
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "box_ap", 41.0),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "mask_ap", 37.2),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "model_id", "137849600"),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml", "keypoint_ap", 65.5),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml", "pq", 41.5),
    ("COCO-Detection/retinanet_R_50_FPN_3x.yaml", "box_ap", 38.7),
])
def test_numbers_are_those_model_zoo_md_publishes(config, column, value):
    model = next(m for m in zoo.zoo_catalogue() if m.config == config)
    assert model.number(column) == value


def test_filter_and_sort():
    keypoints = zoo.find_zoo_models(task="keypoints", sort_by="keypoint AP")
    aps = [m.number("keypoint_ap") for m in keypoints if m.number("keypoint_ap") is not None]
    assert aps == sorted(aps, reverse=True) and len(aps) >= 4
    fast = zoo.find_zoo_models("R_50", sort_by="inference s/im", published_only=True)
    times = [m.number("inference_s_per_image") for m in fast if m.number("inference_s_per_image") is not None]
    assert times == sorted(times) and all(m.checkpoint_url for m in fast)
