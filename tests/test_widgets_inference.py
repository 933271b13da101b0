"""The inference widgets, headless: set ``.value`` as a user would and check what they show."""

import base64
import io
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from d2nb import zoo
from d2nb.predict import prediction_from_arrays
from d2nb.widgets.inference import ModelPicker, ThresholdExplorer, UploadPanel, camera_snapshot

NAMES = ["circle", "triangle", "square", "star"]
SCORES = [0.95, 0.8, 0.62, 0.41, 0.2, 0.07]
CLASSES = [0, 1, 0, 3, 2, 1]


def cached_prediction(name="scene.png", size=(90, 140)):
    image = np.full((*size, 3), 30, np.uint8)
    boxes = [(5 + 20 * i, 5 + 10 * (i % 3), 25 + 20 * i, 35 + 10 * (i % 3)) for i in range(len(SCORES))]
    masks = np.zeros((len(SCORES), *size), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    return prediction_from_arrays(image, boxes, SCORES, CLASSES, NAMES, masks, name=name)


def decoded(image_widget) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_widget.value)))


def test_slider_changes_the_drawn_instances_as_the_cached_scores_say():
    explorer = ThresholdExplorer([cached_prediction()], score_threshold=0.5, score_floor=0.05)
    assert explorer.drawn_count == 3  # 0.95, 0.8, 0.62
    first_picture = explorer.image.value
    for threshold in (0.05, 0.3, 0.5, 0.7, 0.9, 0.99):
        explorer.slider.value = threshold
        assert explorer.drawn_count == sum(s >= threshold for s in SCORES)
    assert explorer.image.value != first_picture
    explorer.slider.value = 0.3
    assert explorer.counts == {"circle": 2, "triangle": 1, "star": 1}
    assert "<b>4</b>" in explorer.counts_html.value and "star" in explorer.counts_html.value


def test_class_filter_and_toggles_redraw_from_the_cache():
    explorer = ThresholdExplorer([cached_prediction()], score_threshold=0.05)
    assert set(explorer.classes.options) == set(NAMES)
    explorer.classes.value = ["circle", "star"]
    assert explorer.counts == {"circle": 2, "star": 1}
    assert explorer.settings["classes"] == ["circle", "star"]
    with_masks = decoded(explorer.image)
    explorer.masks.value = False
    without_masks = decoded(explorer.image)
    assert np.abs(with_masks.astype(int) - without_masks.astype(int)).sum() > 0
    explorer.boxes.value = explorer.labels.value = False
    assert np.abs(decoded(explorer.image).astype(int) - 30).max() < 12  # only JPEG noise is left
    assert explorer.last_redraw_ms is not None


def test_upload_of_a_picture_and_a_text_file_named_jpg_shows_the_error_and_renders_the_picture():
    explorer = ThresholdExplorer([], score_threshold=0.5)
    seen = []

    def predict(images):  # stands in for Predictor.predict: one cached scene per picture
        seen.extend(images)
        return [cached_prediction(name=image.name, size=image.image.shape[:2]) for image in images]

    panel = UploadPanel(predict, explorer)
    picture = io.BytesIO()
    Image.new("RGB", (140, 90), "white").save(picture, "PNG")
    now = datetime.now(timezone.utc)  # as ipywidgets 8 deserialises what the browser sends
    panel.upload.value = [
        {"name": "holiday.png", "type": "image/png", "size": len(picture.getvalue()),
         "content": memoryview(picture.getvalue()), "last_modified": now},
        {"name": "notes.jpg", "type": "image/jpeg", "size": 11, "content": memoryview(b"hello world"),
         "last_modified": now},
    ]
    assert "notes.jpg" in panel.messages.value and "is not a picture" in panel.messages.value
    assert "holiday.png" not in panel.messages.value.split("added")[0].split("notes.jpg")[0]
    assert [image.name for image in seen] == ["holiday.png"]
    assert [p.name for p in explorer.predictions] == ["holiday.png"]
    assert explorer.current.name == "holiday.png" and decoded(explorer.image).shape[:2] == (90, 140)
    assert explorer.drawn_count == 3


def test_picker_lists_the_installed_zoo_with_numbers_and_yields_a_choice(tmp_path):
    picker = ModelPicker(config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", runs_root=tmp_path)
    labels = [label for label, _ in picker.select.options]
    shipped = {str(p.relative_to(zoo.zoo_configs_dir())) for p in zoo.zoo_configs_dir().rglob("*.yaml")
               if not p.name.startswith("Base-")}
    assert len(shipped) > 60 and shipped <= {key[1] for _, key in picker.select.options}
    label = next(lb for lb in labels if lb.startswith("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    assert "box AP 41" in label and "mask AP 37.2" in label and "s/im 0.043" in label
    assert picker.value.zoo_name == "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    assert picker.value.weights.startswith("https://") and "box AP" in picker.details.value

    picker.task.value = "keypoints"
    picker.sort.value = "keypoint AP"
    keys = [key[1] for _, key in picker.select.options]
    assert keys[:2] == ["COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml",  # 66.1, MODEL_ZOO.md's best
                        "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml"]  # 66.0
    assert all("keypoint" in k for k in keys)
    picker.search.value = "R_101"
    assert [key[1] for _, key in picker.select.options] == ["COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml"]
    assert picker.value.zoo_name == "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml"


def test_picker_offers_training_runs_with_their_class_names(tmp_path):
    run = tmp_path / "shapes"
    run.mkdir()
    (run / "config.yaml").write_text("DATASETS:\n  TRAIN:\n  - d2nb_synthetic_train\n")
    (run / "model_final.pth").write_bytes(b"")
    picker = ModelPicker(runs_root=tmp_path)  # config None: the newest run is the first choice
    assert picker.select.value == ("run", str(run))
    assert picker.value.class_names == NAMES and picker.value.weights.endswith("model_final.pth")
    picker.run_folder.value = str(tmp_path / "nothing_here")
    picker.add_run.click()
    assert "holds no config.yaml" in picker.details.value


def test_camera_snapshot_joins_the_explorer():
    explorer = ThresholdExplorer([], score_threshold=0.5)
    box = camera_snapshot(lambda images: [cached_prediction(name=i.name) for i in images], explorer)
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), "green").save(picture, "JPEG")
    box.camera.data_url = "data:image/jpeg;base64," + base64.b64encode(picture.getvalue()).decode()
    assert [p.name for p in explorer.predictions] == ["snapshot_1.jpg"] and explorer.drawn_count == 3
