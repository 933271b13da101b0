"""Run a detectron2 model exported to ONNX with numpy, onnxruntime and opencv alone.

d2nb saves this file as ``run_onnx.py`` beside ``model.onnx`` and ``model.json`` (what the
model expects: colour order, resize sizes, class names). Nothing here imports detectron2,
torch or d2nb, so the three files can be copied to a machine that has only

    pip install numpy onnxruntime opencv-python-headless    # onnxruntime-gpu for CUDA

From a shell:

    python run_onnx.py picture.jpg more/*.png [--score-threshold 0.5] [--model model.onnx]

From Python:

    from run_onnx import OnnxModel
    model = OnnxModel("model.onnx")               # CUDA when onnxruntime has it, else the CPU
    found = model.predict(cv2.imread("picture.jpg"))   # a BGR picture, as opencv reads it
    found["boxes"], found["scores"], found["classes"], found["masks"]

The exported graph holds what detectron2 does between the resized picture and the 28 x 28
mask probabilities (normalising, padding to the backbone's stride, the network, NMS). Before
and after it, this file does what detectron2 leaves to the caller:

- ``preprocess``: the config's colour order, the shortest edge resized to ``min_size`` with
  the longest at most ``max_size`` (``INPUT.MIN_SIZE_TEST``, ``INPUT.MAX_SIZE_TEST``) with
  PIL's bilinear arithmetic, as detectron2 resizes, then a float32 ``3 x H x W`` array;
- ``postprocess``: boxes (and keypoints) scaled back to the picture and clipped, empty boxes
  dropped, and each instance's mask probabilities pasted into its box at full size and
  thresholded at 0.5, as detectron2's ``detector_postprocess`` and ``paste_masks_in_image``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np


def output_size(height: int, width: int, min_size: int, max_size: int) -> tuple:
    """``(height, width)`` after resizing the shortest edge to ``min_size``, the longest
    to at most ``max_size`` (detectron2's ``ResizeShortestEdge``); ``min_size`` 0: as it is."""
    if not min_size:
        return height, width
    scale = min_size / min(height, width)
    new_height, new_width = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def preprocess(image_bgr: np.ndarray, settings: dict) -> np.ndarray:
    """The picture as the exported model takes it: ``3 x H x W`` float32, 0-255, resized and
    in the colour order the model was trained with."""
    image = image_bgr if settings["input_format"] == "BGR" else image_bgr[:, :, ::-1]
    height, width = image.shape[:2]
    new_height, new_width = output_size(height, width, settings["min_size"], settings["max_size"])
    if (new_height, new_width) != (height, width):
        # where speed matters more than the last 1e-3 of score, cv2.resize(image, (new_width,
        # new_height), interpolation=cv2.INTER_LINEAR) is some 50x faster
        image = resize_like_pil(image, new_width, new_height)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


# detectron2 resizes uint8 pictures with PIL's bilinear filter, which widens its triangle when
# shrinking and works in 22-bit fixed point; opencv's bilinear does neither, and the grey
# levels it changes moved scores by 1e-2 on the CPU recipe. What follows is PIL's arithmetic
# (libImaging/Resample.c): the same bytes, checked against PIL in d2nb's tests.
PRECISION_BITS = 32 - 8 - 2


def resize_like_pil(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``H x W x C`` uint8 ``image`` resized to ``width`` x ``height`` as PIL's
    ``Image.resize(..., Image.BILINEAR)`` does it: columns first, then rows."""
    if width != image.shape[1]:
        image = _resample(image, *_pil_taps(image.shape[1], width), axis=1)
    if height != image.shape[0]:
        image = _resample(image, *_pil_taps(image.shape[0], height), axis=0)
    return image


def _pil_taps(in_size: int, out_size: int) -> tuple:
    """``(index, weights)``, each ``out_size x taps``: the input pixels each output pixel
    averages and their fixed-point weights."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's half-width, 1 pixel, widened by the shrink factor
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    count = np.minimum((centers + support + 0.5).astype(np.int64), in_size) - first
    taps = np.arange(int(np.ceil(support)) * 2 + 1)
    weights = np.clip(1.0 - np.abs((first[:, None] + taps - centers[:, None] + 0.5) * (1.0 / filterscale)), 0.0, None)
    weights[taps[None, :] >= count[:, None]] = 0
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    fixed = np.trunc(weights * (1 << PRECISION_BITS) + 0.5).astype(np.int32)
    return np.minimum(first[:, None] + taps, in_size - 1), fixed


def _resample(image: np.ndarray, index: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * image.ndim
    shape[axis] = -1
    total = np.full(image.shape[:axis] + (len(index),) + image.shape[axis + 1:], 1 << (PRECISION_BITS - 1), np.int32)
    for tap in range(index.shape[1]):
        total += np.take(image, index[:, tap], axis=axis).astype(np.int32) * weights[:, tap].reshape(shape)
    return np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8)


def paste_mask(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """An ``M x M`` mask of probabilities for ``box`` (XYXY pixels) as a full-size boolean
    mask: bilinear sampling at each pixel centre inside the box and a pixel of margin,
    zero outside the ``M x M`` grid (detectron2's ``paste_masks_in_image``)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    size = mask_probs.shape[0]
    left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    mask = np.zeros((height, width), dtype=bool)
    if right <= left or bottom <= top:
        return mask
    rows = _bilinear_weights(np.arange(top, bottom), y0, y1, size)
    columns = _bilinear_weights(np.arange(left, right), x0, x1, size)
    mask[top:bottom, left:right] = rows @ mask_probs.astype(np.float32) @ columns.T >= threshold
    return mask


def _bilinear_weights(pixels: np.ndarray, start: float, end: float, size: int) -> np.ndarray:
    """``len(pixels) x size``: how much each of the mask's ``size`` cells adds to each pixel,
    sampling at pixel centres, the box's edges at the grid's outer edges."""
    at = ((pixels + 0.5 - start) / max(end - start, 1e-6) * size - 0.5).astype(np.float32)
    low = np.floor(at).astype(np.int64)
    fraction = at - low
    weights = np.zeros((len(pixels), size + 2), dtype=np.float32)  # two spare columns for cells off the grid
    index = np.arange(len(pixels))
    weights[index, np.clip(low, -1, size) + 1] += 1 - fraction
    weights[index, np.clip(low + 1, -1, size) + 1] += fraction
    return weights[:, 1:-1]


def postprocess(outputs: dict, input_size: tuple, image_size: tuple, mask_threshold: float = 0.5) -> dict:
    """Detections in picture coordinates from the exported model's ``outputs`` (its output
    names: ``pred_boxes``, ``scores``, ``pred_classes``, ``pred_masks``, ``pred_keypoints``)
    for an input of ``input_size`` (height, width) made from a picture of ``image_size``.

    Returns ``boxes`` (N x 4 XYXY), ``scores``, ``classes``, and when the model has them
    ``masks`` (N x H x W bool) and ``keypoints`` (N x K x 3: x, y, score)."""
    height, width = image_size
    scale_y, scale_x = height / input_size[0], width / input_size[1]
    boxes = np.asarray(outputs["pred_boxes"], dtype=np.float32).reshape(-1, 4) * np.float32([scale_x, scale_y, scale_x, scale_y])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    found = {"boxes": boxes[keep], "scores": np.asarray(outputs["scores"], dtype=np.float32)[keep],
             "classes": np.asarray(outputs["pred_classes"]).astype(np.int64)[keep]}
    if "pred_masks" in outputs:
        probs = np.asarray(outputs["pred_masks"])[keep][:, 0]
        found["masks"] = (np.stack([paste_mask(p, b, height, width, mask_threshold) for p, b in zip(probs, found["boxes"])])
                          if len(probs) else np.zeros((0, height, width), dtype=bool))
    if "pred_keypoints" in outputs:
        keypoints = np.asarray(outputs["pred_keypoints"], dtype=np.float32)[keep].copy()
        keypoints[:, :, 0] *= scale_x
        keypoints[:, :, 1] *= scale_y
        found["keypoints"] = keypoints
    return found


class OnnxModel:
    """``model.onnx`` in an onnxruntime session, with the ``model.json`` saved beside it.

    ``providers``: onnxruntime's execution providers, in order of preference; by default
    CUDA when this onnxruntime has it (the onnxruntime-gpu package), then the CPU.
    """

    def __init__(self, path="model.onnx", providers=None):
        import onnxruntime

        self.path = Path(path)
        settings_file = self.path.with_suffix(".json")
        if not settings_file.is_file():
            raise FileNotFoundError(f"{settings_file} is missing: it says how to resize pictures for {self.path.name}; "
                                    "copy it from the folder the model was exported to")
        self.settings = json.loads(settings_file.read_text())
        available = onnxruntime.get_available_providers()
        wanted = list(providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available])
        self.session = onnxruntime.InferenceSession(str(self.path), providers=wanted)
        self.providers = self.session.get_providers()  # what it runs on (a provider that fails to start is left out)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def predict(self, image_bgr: np.ndarray) -> dict:
        """Detections in a BGR ``H x W x 3`` uint8 picture (see ``postprocess``)."""
        pixels = preprocess(image_bgr, self.settings)
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: pixels})))
        return postprocess(outputs, pixels.shape[1:], image_bgr.shape[:2], self.settings.get("mask_threshold", 0.5))


def describe(found: dict, class_names: list, score_threshold: float = 0.5) -> str:
    """One line per detection scoring at least ``score_threshold``."""
    lines = []
    for index in np.flatnonzero(found["scores"] >= score_threshold):
        cls = int(found["classes"][index])
        name = class_names[cls] if cls < len(class_names) else f"class {cls}"
        x0, y0, x1, y1 = found["boxes"][index]
        area = f", mask {int(found['masks'][index].sum())} px" if "masks" in found else ""
        lines.append(f"  {name} {found['scores'][index]:.3f} box ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}){area}")
    return "\n".join(lines) or "  nothing"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run an ONNX model exported by d2nb on pictures.")
    parser.add_argument("pictures", nargs="+", help="picture files")
    parser.add_argument("--model", default=str(Path(__file__).with_name("model.onnx")), help="the .onnx file")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detections scoring less are not listed")
    args = parser.parse_args(argv)
    model = OnnxModel(args.model)
    print(f"{model.path.name} on {model.providers[0]}")
    for picture in args.pictures:
        image = cv2.imread(picture, cv2.IMREAD_COLOR)
        if image is None:
            print(f"{picture}: not a picture opencv can read")
            continue
        print(f"{picture}:\n{describe(model.predict(image), model.settings.get('class_names', []), args.score_threshold)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
