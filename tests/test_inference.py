"""Inference with the model 03_train made: the notebook under papermill, the predictor, the
``d2nb demo`` command line and video, on the synthetic shapes' validation pictures."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_notebook
from d2nb.cli import main
from d2nb.data import make_synthetic_dataset
from d2nb.errors import D2nbError
from d2nb.images import load_images
from d2nb.predict import DEFAULT_SCORE_THRESHOLD, Predictor, resolve_device
from d2nb.video import predict_video

MATCHED_FRACTION = 0.90  # of ground-truth instances, IoU >= 0.5 and the right class


@pytest.fixture(scope="module")
def val_split():
    json_file, image_dir = make_synthetic_dataset()["val"]  # the split trained_run evaluated on
    return Path(json_file), Path(image_dir)


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor(trained_run["output_dir"], device="cpu")


def box_iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    w = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    h = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    return w * h / (aw * ah + bw * bh - w * h)


def matched_fraction(predictions: dict, ground_truth: dict) -> float:
    """Greedy matching per picture (best-scoring prediction first), as COCO's does."""
    truth_id = {image["file_name"]: image["id"] for image in ground_truth["images"]}
    file_of = {image["id"]: image["file_name"] for image in predictions["images"]}
    matched = 0
    for image_id, file_name in file_of.items():
        truths = [a for a in ground_truth["annotations"] if a["image_id"] == truth_id[file_name]]
        found = sorted((a for a in predictions["annotations"] if a["image_id"] == image_id), key=lambda a: -a["score"])
        free = list(truths)
        for detection in found:
            candidates = [(box_iou(detection["bbox"], t["bbox"]), n) for n, t in enumerate(free)
                          if t["category_id"] == detection["category_id"]]
            iou, n = max(candidates, default=(0.0, None))
            if iou >= 0.5:
                matched += 1
                free.pop(n)
    return matched / len(ground_truth["annotations"])


def test_notebook_finds_the_shapes_and_writes_a_picture_per_input_and_a_json(trained_run, val_split, tmp_path):
    run, (truth_json, image_dir) = trained_run["output_dir"], val_split
    out = tmp_path / "out"
    notebook = run_notebook("01_inference.ipynb", tmp_path / "01_inference.out.ipynb", {
        "config": run / "config.yaml", "weights": run / "model_final.pth",
        "inputs": f"{image_dir}/*.png", "output": out})
    inputs = sorted(p.name for p in image_dir.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == inputs
    predictions = json.loads((out / "predictions.json").read_text())
    assert sorted(i["file_name"] for i in predictions["images"]) == inputs
    assert [c["name"] for c in predictions["categories"]] == ["circle", "triangle", "square", "star"]
    assert min(a["score"] for a in predictions["annotations"]) >= DEFAULT_SCORE_THRESHOLD
    fraction = matched_fraction(predictions, json.loads(truth_json.read_text()))
    print(f"matched {fraction:.1%} of ground-truth instances at the default threshold")
    assert fraction >= MATCHED_FRACTION
    outputs = [o for cell in notebook["cells"] for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no picture sheet in the report"
    assert not any(o["output_type"] == "error" for o in outputs)


def test_batches_give_the_predictions_of_one_picture_at_a_time_and_a_second_run_is_cached(predictor, val_split):
    images = load_images(str(val_split[1] / "0000*.png"))[:6]
    calls = []
    forward = predictor._forward
    predictor._forward = lambda batch: calls.append(len(batch)) or forward(batch)
    try:
        predictor.set_score_floor(predictor.score_floor)  # empties the cache
        batched = predictor.predict(images, batch_size=6, progress=False)
        predictor.set_score_floor(predictor.score_floor)
        single = predictor.predict(images, batch_size=1, progress=False)
        again = predictor.predict(images, batch_size=6, progress=False)
    finally:
        predictor._forward = forward
    assert calls == [6] + [1] * 6  # the third call ran no forward pass
    for a, b, c in zip(batched, single, again):
        assert len(a) == len(b) and np.allclose(a.boxes, b.boxes, atol=0.5) and np.allclose(a.scores, b.scores, atol=1e-3)
        assert c.name == a.name and np.array_equal(c.scores, b.scores)
    assert sum(len(p.kept(DEFAULT_SCORE_THRESHOLD)) for p in batched) >= 6


def test_demo_command_takes_demo_py_flags(trained_run, val_split, tmp_path, capsys):
    run, image_dir = trained_run["output_dir"], val_split[1]
    (tmp_path / "notes.jpg").write_text("not a picture")
    code = main(["demo", "--config-file", str(run / "config.yaml"), "--input", str(image_dir / "00000.png"),
                 str(image_dir / "00001.png"), str(tmp_path / "notes.jpg"), "--output", str(tmp_path / "out"),
                 "--confidence-threshold", "0.6", "--opts", "MODEL.WEIGHTS", str(run / "model_final.pth")])
    printed = capsys.readouterr().out
    assert code == 0 and "skipped: 'notes.jpg' is not a picture" in printed
    assert "00000.png:" in printed and "00001.png:" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "predictions.json"]
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert min(a["score"] for a in saved["annotations"]) >= 0.6
    assert main(["demo", "--config-file", str(run), "--input", str(image_dir / "00002.png"),
                 "--output", str(tmp_path / "single.jpg")]) == 0
    assert cv2.imread(str(tmp_path / "single.jpg")).shape == (128, 128, 3)
    assert (tmp_path / "single.predictions.json").is_file()
    assert main(["demo", "--config-file", str(run)]) == 2
    assert "exactly one of --input, --video-input and --webcam" in capsys.readouterr().err


def test_video_in_annotated_video_out(predictor, val_split, tmp_path):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (128, 128))
    for path in sorted(val_split[1].glob("*.png"))[:7]:
        writer.write(cv2.imread(str(path)))
    writer.release()
    result = predict_video(predictor, clip, tmp_path / "out", batch_size=3, progress=False)
    assert result.output == str(tmp_path / "out" / "clip.mp4") and result.frames == 7
    assert sum(result.detections_per_frame) >= 7
    capture = cv2.VideoCapture(result.output)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 7 and capture.read()[1].shape == (128, 128, 3)
    with pytest.raises(D2nbError, match="is not a video"):
        predict_video(predictor, val_split[0], tmp_path / "out")


def test_checkpoint_downloads_and_devices_fail_with_the_fix(trained_run):
    with pytest.raises(D2nbError, match=r"could not download the checkpoint 'http://127.0.0.1:9/m.pkl'") as error:
        Predictor(trained_run["output_dir"], weights="http://127.0.0.1:9/m.pkl", device="cpu")
    # one download function, its fix worded for inference: random weights are no way out here
    assert "a local .pth path" in str(error.value) and "from scratch" not in str(error.value)
    import torch
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(D2nbError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(D2nbError, match="names no weights"):
        Predictor("mask_rcnn_R_18_FPN_cpu.yaml", device="cpu")


def test_predictions_are_those_of_detectron2_default_predictor_as_demo_py_runs_it(predictor):
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    from d2nb.data.synthetic import draw_scene

    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(predictor.choice.config)
    cfg.merge_from_list(["MODEL.WEIGHTS", predictor.choice.weights, "MODEL.DEVICE", "cpu",
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(predictor.score_floor)])
    demo = DefaultPredictor(cfg)
    rng = np.random.default_rng(5)
    pictures = [draw_scene(rng, 240, 320, 5)[0] for _ in range(3)]  # resized to 128 px by both
    for ours, picture in zip(predictor.predict(pictures, batch_size=3, progress=False), pictures):
        theirs = demo(np.ascontiguousarray(picture[:, :, ::-1]))["instances"]  # DefaultPredictor takes BGR
        kept = theirs.scores.numpy() >= DEFAULT_SCORE_THRESHOLD
        assert len(ours.kept(DEFAULT_SCORE_THRESHOLD)) == kept.sum() > 0
        assert np.allclose(ours.boxes[ours.kept(DEFAULT_SCORE_THRESHOLD)], theirs.pred_boxes.tensor.numpy()[kept], atol=1.0)


def test_a_training_run_keeps_its_class_names_for_a_fresh_kernel(trained_run, predictor):
    saved = json.loads((trained_run["output_dir"] / "class_names.json").read_text())
    assert saved == ["circle", "triangle", "square", "star"] == predictor.labels.class_names


def test_notebook_given_an_evaluation_folder_applies_its_per_class_thresholds(trained_run, predictor, val_split,
                                                                               tmp_path):
    """04_evaluate's thresholds.json, named by the ``thresholds`` parameter, decides what 01 keeps:
    circles above the median score of the circles the default 0.5 keeps (so the file keeps fewer
    than the default would), every other class above 0.3 (not the default 0.5)."""
    run, (_, image_dir) = trained_run["output_dir"], val_split
    found = predictor.predict(load_images(f"{image_dir}/*.png"))
    names = predictor.labels.class_names
    scores = {name: [] for name in names}
    for prediction in found:
        for label, score in zip(prediction.classes, prediction.scores):
            scores[names[int(label)]].append(float(score))
    confident = [s for s in scores["circle"] if s >= DEFAULT_SCORE_THRESHOLD]
    assert len(set(confident)) >= 2, scores["circle"]
    circle = float(np.median(confident))
    evaluation = tmp_path / "evaluate"
    evaluation.mkdir()
    (evaluation / "thresholds.json").write_text(json.dumps({"score_threshold": 0.3, "per_class": {"circle": circle}}))
    out = tmp_path / "out"
    run_notebook("01_inference.ipynb", tmp_path / "01.out.ipynb", {
        "config": run, "inputs": f"{image_dir}/*.png", "thresholds": evaluation, "output": out})
    saved = json.loads((out / "predictions.json").read_text())
    name_of = {c["id"]: c["name"] for c in saved["categories"]}
    kept = {name: sorted(a["score"] for a in saved["annotations"] if name_of[a["category_id"]] == name) for name in names}
    expected = {name: sorted(s for s in scores[name] if s >= (circle if name == "circle" else 0.3)) for name in names}
    assert {n: len(v) for n, v in kept.items()} == {n: len(v) for n, v in expected.items()}
    assert kept["circle"] and min(kept["circle"]) >= round(circle, 4) - 1e-4  # predictions.json rounds to 4 places
    assert len(kept["circle"]) < len(confident)  # the file's threshold, not 0.5


def test_a_call_with_more_pictures_than_the_cache_holds_returns_them_all(predictor, val_split, monkeypatch):
    """Tiling a large picture makes hundreds of tiles in one call: the cache's size bounds
    what is remembered between calls, not what a call returns."""
    from d2nb.predict import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "CACHE_SIZE", 2)
    predictor.set_score_floor(predictor.score_floor)  # an empty cache
    pictures = load_images(sorted(val_split[1].glob("*.png"))[:5])
    found = predictor.predict(pictures, batch_size=2, progress=False)
    assert [p.name for p in found] == [p.name for p in pictures]
    assert len(predictor._cache) == 2
