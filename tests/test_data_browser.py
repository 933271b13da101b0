"""The dataset browser, headless: set the controls' values, read what is shown. And the plain
functions under it: drawing ground truth, class and per-image counts, their plots."""

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import SHARED_DATASETS  # noqa: E402
from d2nb.data.stats import (class_histogram, instances_per_image, plot_class_histogram,  # noqa: E402
                             plot_dataset_stats, plot_instances_per_image)
from d2nb.data.synthetic import SyntheticSpec, make_synthetic_dataset  # noqa: E402
from d2nb.data.view import AnnotatedImages, draw_annotations  # noqa: E402
from d2nb.draw import class_colour  # noqa: E402
from d2nb.widgets.browser import DatasetBrowser  # noqa: E402

BCCD_VALID = SHARED_DATASETS / "bccd" / "valid" / "_annotations.coco.json"


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    splits = make_synthetic_dataset(SyntheticSpec(num_train=2, num_val=12), tmp_path_factory.mktemp("synthetic"))
    return splits["val"]


def test_slider_and_buttons_step_through_the_images(synthetic_val):
    json_file, image_root = synthetic_val
    browser = DatasetBrowser(json_file, image_root, show_stats=False)
    images = json.loads(open(json_file).read())["images"]
    first = browser.image.value
    assert browser.position == 0 and images[0]["file_name"] in browser.caption.value
    browser.index.value = 3
    assert browser.position == 3 and browser.current_image == images[3]
    assert images[3]["file_name"] in browser.caption.value and browser.image.value != first
    browser.next_button.click()
    assert browser.position == 4
    browser.index.value = 0
    browser.previous_button.click()
    assert browser.position == len(images) - 1  # wraps around
    assert browser.picture.shape == (384, 384, 3)  # 128 px enlarged 3 times to be readable


def test_class_filter_shows_only_images_holding_the_class(synthetic_val):
    json_file, image_root = synthetic_val
    coco = json.loads(open(json_file).read())
    holding = sorted({i for i, image in enumerate(coco["images"])
                      for a in coco["annotations"] if a["image_id"] == image["id"] and a["category_id"] == 2})
    browser = DatasetBrowser(json_file, image_root, show_stats=False)
    browser.index.value = 5
    browser.classes.value = (2,)
    assert browser.shown_positions == holding and browser.position == holding[0]
    assert browser.index.max == len(holding) - 1
    assert "triangle" in browser.caption.value
    assert all(name not in browser.caption.value for name in ("circle", "square", "star"))
    browser.classes.value = ()
    assert browser.shown_positions == list(range(len(coco["images"])))


def test_toggling_masks_changes_the_picture(synthetic_val):
    browser = DatasetBrowser(*synthetic_val, show_stats=False)
    with_masks = browser.picture.copy()
    browser.masks.value = False
    assert not np.array_equal(with_masks, browser.picture)
    browser.boxes.value = browser.labels.value = False
    plain = AnnotatedImages(*synthetic_val).draw(0, masks=False, boxes=False, labels=False)
    assert np.array_equal(browser.picture, plain)


def test_a_filter_matching_nothing_and_the_stats_plot_on_bccd():
    browser = DatasetBrowser(BCCD_VALID)
    assert bytes(browser.stats.value).startswith(b"\x89PNG")
    browser.classes.value = (0,)  # the export's placeholder category: no box uses it
    assert browser.position is None and bytes(browser.image.value) == b""
    assert "no image holds RBC-WBC" in browser.caption.value
    browser.classes.value = (2,)
    assert browser.position is not None and "wbc" in browser.caption.value


def test_a_missing_image_is_shown_as_a_placeholder(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "gone.jpg", "height": 50, "width": 70}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "segmentation": []}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    browser = DatasetBrowser(tmp_path / "a.json", show_stats=False)
    assert browser.picture.shape == (250, 350, 3) and "gone.jpg" in browser.caption.value


def test_draw_annotations_puts_masks_and_boxes_where_they_are():
    canvas = np.zeros((40, 60, 3), np.uint8)
    square = {"category_id": 7, "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    masked = draw_annotations(canvas, [square], {7: "box"}, {7: 0}, masks=True, boxes=False, labels=False)
    assert masked[20, 20].any() and not masked[5, 5].any() and not masked[35, 45].any()
    boxed = draw_annotations(canvas, [square], {7: "box"}, {7: 0}, masks=False, boxes=True, labels=False)
    assert tuple(boxed[10, 20]) == class_colour(0) and not boxed[20, 20].any()
    half = draw_annotations(np.zeros((20, 30, 3), np.uint8), [square], {7: "box"}, {7: 0}, scale=0.5,
                            masks=False, boxes=True, labels=False)
    assert tuple(half[5, 10]) == class_colour(0)


def test_class_histogram_and_instances_per_image_match_the_file():
    coco = json.loads(BCCD_VALID.read_text())
    rows = {row["name"]: row for row in class_histogram(BCCD_VALID)}
    assert rows["RBC-WBC"]["instances"] == 0
    assert rows["rbc"]["instances"] == sum(a["category_id"] == 1 for a in coco["annotations"])
    assert rows["wbc"]["images"] == len({a["image_id"] for a in coco["annotations"] if a["category_id"] == 2})
    counts = instances_per_image(BCCD_VALID)
    assert counts.sum() == len(coco["annotations"]) and len(counts) == len(coco["images"])
    assert instances_per_image(BCCD_VALID, [2]).sum() == rows["wbc"]["instances"]


def test_plots_have_a_bar_per_class_and_both_panels():
    assert len(plot_class_histogram(BCCD_VALID).patches) == 3
    assert plot_instances_per_image(BCCD_VALID).get_xlabel() == "instances in the image"
    figure = plot_dataset_stats(BCCD_VALID)
    assert len(figure.axes) == 2
