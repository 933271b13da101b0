"""Export: the plain numpy + opencv runtime that runs an exported model (resizing as detectron2
does, masks pasted as detectron2 pastes them), and the comparison that reports what differs."""

import numpy as np

from d2nb.export import runtime
from d2nb.export.check import compare


def test_dropped_masks_are_a_problem_not_a_success():
    image_masks = np.zeros((1, 20, 20), bool)
    image_masks[0, 5:10, 5:10] = True
    reference = [{"boxes": np.float32([[5, 5, 10, 10]]), "scores": np.float32([0.9]), "classes": np.int64([1]),
                  "masks": image_masks}]
    without_masks = [{key: reference[0][key] for key in ("boxes", "scores", "classes")}]
    comparison = compare("ONNX Runtime (CPU)", reference, without_masks)
    assert any("drops the masks" in problem for problem in comparison.problems)
    assert comparison.row()["verdict"] == "DIFFERS" and comparison.row()["mask IoU min / mean"] == "no masks"


# --------------------------------------------------------------------------- the plain runtime


def test_mask_pasting_matches_detectron2():
    import torch
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    generator = np.random.default_rng(0)
    probs = generator.random((12, 28, 28), dtype=np.float32)
    probs = (probs + np.roll(probs, 1, 1) + np.roll(probs, 1, 2)) / 3  # smoother, with values near 0.5
    corners = generator.uniform(0, 90, (12, 2))
    boxes = np.concatenate([corners, corners + generator.uniform(2, 60, (12, 2))], axis=1)
    boxes = np.float32(boxes.clip(0, [120, 100, 120, 100]))  # clipped to the picture, as the models' boxes are
    expected = paste_masks_in_image(torch.from_numpy(probs), Boxes(torch.from_numpy(boxes)), (100, 120)).numpy()
    pasted = np.stack([runtime.paste_mask(p, b, 100, 120) for p, b in zip(probs, boxes)])
    assert (pasted != expected).sum() <= 3, f"{(pasted != expected).sum()} pixels differ"


def test_resizing_gives_the_bytes_pil_gives_detectron2():
    from PIL import Image

    generator = np.random.default_rng(0)
    for height, width, new_height, new_width in [(256, 256, 128, 128), (480, 640, 800, 1067), (100, 90, 142, 128),
                                                 (1000, 750, 213, 160), (37, 55, 800, 1189)]:
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR))
        assert np.array_equal(runtime.resize_like_pil(image, new_width, new_height), expected)


def test_resize_sizes_are_detectron2s():
    from detectron2.data import transforms as T

    for height, width, short, longest in [(128, 128, 128, 213), (480, 640, 800, 1333), (1000, 200, 800, 1333),
                                          (256, 255, 128, 213), (37, 1000, 800, 1333)]:
        expected = T.ResizeShortestEdge.get_output_shape(height, width, short, longest)
        assert runtime.output_size(height, width, short, longest) == tuple(expected)


def test_postprocess_scales_boxes_back_and_drops_empty_ones():
    outputs = {"pred_boxes": np.float32([[10, 10, 50, 30], [60, 60, 60, 70]]), "scores": np.float32([0.9, 0.8]),
               "pred_classes": np.int64([0, 1]), "pred_masks": np.ones((2, 1, 28, 28), np.float32)}
    found = runtime.postprocess(outputs, (64, 64), (128, 256))
    assert found["boxes"].tolist() == [[40, 20, 200, 60]] and found["masks"].shape == (1, 128, 256)
    inside = np.zeros((128, 256), bool)
    inside[20:60, 40:200] = True
    mask = found["masks"][0]
    assert mask[21:59, 41:199].all() and not mask[~inside].any()  # box corners fall under 0.5, as in detectron2
