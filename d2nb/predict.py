"""Running a model on pictures and videos: the predictor, its predictions, and saving them.

    predictor = Predictor("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")  # zoo checkpoint
    predictor = Predictor("runs/train")                  # a folder 03_train wrote
    predictions = predictor.predict(load_images("photos/*.jpg"), batch_size=4)
    save_outputs(predictions, "runs/inference", score_threshold=0.5)

The model keeps every detection scoring at least ``score_floor`` (0.05, detectron2's own
evaluation threshold); ``score_threshold`` is applied afterwards, when drawing, counting and
saving, so the threshold explorer redraws from the cached predictions without running the
model again. Images already predicted by the same predictor are served from its cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from d2nb import zoo
from d2nb.errors import D2nbError
from d2nb.fast_inference import half_precision_backbone
from d2nb.images import LoadedImage, safe_file_name
from d2nb.weights import local_weights  # noqa: F401  (d2nb.predict.local_weights, as before)

logger = logging.getLogger("d2nb.predict")

DEFAULT_SCORE_THRESHOLD = 0.5  # demo.py's --confidence-threshold default
SCORE_FLOOR = 0.05
CACHE_SIZE = 512  # predictions kept per predictor
GPU_BATCHES_IN_FLIGHT = 2  # batches run at once on a GPU, each in its own thread and stream


@dataclass
class Labels:
    """What a model's outputs mean: class names and the dataset ids they are saved under."""

    class_names: list
    category_ids: list  # COCO category id of each contiguous class index
    stuff_names: list | None = None
    keypoint_names: list | None = None
    keypoint_connections: list | None = None  # [(name, name, rgb)]


@dataclass
class Prediction:
    """What the model found in one picture, with scores down to the predictor's floor.

    ``boxes`` are XYXY pixels of ``image``; ``masks`` one ``(x0, y0, bool crop)`` per instance
    (crops keep memory and redraw time proportional to the objects, not the picture), or
    ``None`` for box-only models; ``keypoints`` ``(N, K, 3)`` x, y, score; ``segments`` a
    label map of ``labels.stuff_names`` (-1 for none) from panoptic and semantic models.
    """

    name: str
    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    labels: Labels
    masks: list | None = None
    keypoints: np.ndarray | None = None
    segments: np.ndarray | None = None
    source: str = ""
    scale: float = 1.0

    def __len__(self) -> int:
        return len(self.scores)

    def kept(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, classes=None) -> np.ndarray:
        """Indices of instances scoring at least ``score_threshold`` whose class name is in
        ``classes`` (``None``: every class), highest score first."""
        keep = self.scores >= score_threshold
        if classes is not None:
            wanted = {c for c in classes}
            keep &= np.array([self.labels.class_names[c] in wanted for c in self.classes], dtype=bool)
        order = np.argsort(-self.scores, kind="stable")
        return order[keep[order]]

    def counts(self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, classes=None) -> dict:
        """``{class name: number of kept instances}``, most frequent first."""
        names = [self.labels.class_names[self.classes[i]] for i in self.kept(score_threshold, classes)]
        return dict(sorted(((n, names.count(n)) for n in set(names)), key=lambda kv: (-kv[1], kv[0])))

    def full_mask(self, index: int) -> np.ndarray:
        """Instance ``index``'s mask at the size of ``image``."""
        mask = np.zeros(self.image.shape[:2], dtype=bool)
        x0, y0, crop = self.masks[index]
        mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return mask


def prediction_from_arrays(image: np.ndarray, boxes, scores, classes, class_names, masks=None,
                           name: str = "image.png") -> Prediction:
    """A ``Prediction`` from plain arrays: XYXY ``boxes`` (N x 4), ``scores``, class indices
    into ``class_names`` and, optionally, full-size boolean ``masks`` (N x H x W). For drawing
    and saving detections that did not come from a ``Predictor`` (ground truth, another tool);
    class ``i`` is saved as COCO category id ``i + 1``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = None
    if masks is not None:
        import torch

        height, width = image.shape[:2]
        crops = _mask_crops(torch.as_tensor(np.asarray(masks, bool)), boxes, height, width)
    labels = Labels(list(class_names), list(range(1, len(class_names) + 1)))
    return Prediction(name, image, boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int64),
                      labels, crops)


def resolve_device(device="auto") -> str:
    """``"auto"`` (or ``None``): CUDA when there is a GPU, else the CPU. Also ``"cpu"``,
    ``"cuda"``, ``"cuda:1"``; ``D2nbError`` for CUDA on a machine without it."""
    import torch

    device = "auto" if device in (None, "") else str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise D2nbError(f"device={device!r} asked for, but this machine has no CUDA GPU",
                        "pass device='cpu' or device='auto'")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise D2nbError(f"device={device!r} is not a device PyTorch knows",
                        "pass 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


class Predictor:
    """A detectron2 model ready to run on pictures, several per forward pass.

    ``config`` and ``weights`` are what ``d2nb.zoo.resolve_model`` takes (a model-zoo name, a
    training output_dir, a yaml path...; weights ``None`` = the config's own checkpoint).
    ``amp`` runs the backbone in float16 on a GPU (see ``d2nb.fast_inference``);
    ``batches_in_flight`` (2 on a GPU, 1 on the CPU) is how many batches ``predict`` runs at once.
    ``opts`` are ``KEY VALUE`` config options (yaml configs)
    or ``key=value`` overrides (LazyConfig ``.py`` configs), as demo.py's ``--opts``.
    Raises ``D2nbError`` for a config, weights file or URL it cannot load.
    """

    def __init__(self, config=None, weights=None, device="auto", amp: bool = False, opts=(),
                 score_floor: float = SCORE_FLOOR, choice: zoo.ModelChoice | None = None):
        self.choice = choice or zoo.resolve_model(config, weights)
        self.device = resolve_device(device)
        self.amp = bool(amp) and self.device.startswith("cuda")
        self.score_floor = float(score_floor)
        if self.choice.config.endswith(".py"):
            self.model, self.resize, self.input_format, dataset = _build_lazy(self.choice, self.device, opts)
        else:
            self.model, self.resize, self.input_format, dataset = _build_yaml(self.choice, self.device, opts)
        self.labels = _labels(dataset, self.choice.class_names, _num_classes(self.model))
        # AMP: the backbone in float16, the heads (boxes, scores) in float32; autocast only for
        # models without a detectron2 backbone (see d2nb.fast_inference)
        self._autocast = self.amp and not hasattr(self.model, "backbone")
        if self.amp and not self._autocast:
            half_precision_backbone(self.model)
        self._masks_in_boxes = _pastes_masks(self.model)
        self._cache = OrderedDict()
        self.batches_in_flight = GPU_BATCHES_IN_FLIGHT if self.device.startswith("cuda") else 1
        self._ahead = {}  # id(picture): its resizing, started while the batch before it runs
        self.set_score_floor(self.score_floor)

    def set_score_floor(self, score_floor: float) -> None:
        """The lowest score the model keeps (the explorer's slider starts there)."""
        self.score_floor = float(score_floor)
        self._cache.clear()
        for module in self.model.modules():
            if hasattr(module, "test_score_thresh"):  # box predictors, RetinaNet, FCOS
                module.test_score_thresh = self.score_floor

    def describe(self) -> str:
        names = self.labels.class_names
        return "\n".join([
            f"{'model':>10}: {self.choice.label}",
            f"{'weights':>10}: {self._weights_text()}",
            f"{'classes':>10}: {len(names)}: {', '.join(names[:12])}" + (" ..." if len(names) > 12 else ""),
            f"{'device':>10}: {self.device}" + (" with AMP" if self.amp else ""),
            f"{'input':>10}: shortest side {self.resize.short_edge_length[0]}, longest at most {self.resize.max_size}",
        ])

    def _weights_text(self) -> str:
        if self.choice.weights is None:
            return "the config's MODEL.WEIGHTS"
        return self.choice.weights or "none (random initialisation)"

    def predict(self, images, batch_size: int = 4, progress: bool = True) -> list:
        """``Prediction`` for every picture that loaded (``LoadedImage`` with an error are
        skipped; plain RGB arrays are accepted too), running ``batch_size`` per forward pass.

        On a GPU two batches are in flight at once (``batches_in_flight``), each in its own
        thread and CUDA stream: while one waits for the GPU (detectron2's post-processing
        synchronises often), the other runs its Python. Pictures are resized ahead, in
        threads, as the batches need them.
        """
        items = [_as_loaded(image, i) for i, image in enumerate(images)]
        items = [item for item in items if item.ok]
        pool = _resize_pool()
        keys = list(pool.map(_image_key, [item.image for item in items]))  # hashing frees the GIL
        todo = [i for i, key in enumerate(keys) if key not in self._cache]
        batch_size = max(1, int(batch_size))
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = _progress(len(todo), progress)
        in_flight = max(1, min(int(self.batches_in_flight), len(batches)))

        def resize_ahead(n):  # batch n's pictures, resized in threads while earlier batches run
            for i in batches[n] if n < len(batches) else []:
                self._ahead[id(items[i].image)] = pool.submit(self._input_tensor, items[i].image)

        def run(n):
            batch = batches[n]
            return _to_predictions(self._forward([items[i].image for i in batch]), [items[i] for i in batch],
                                   self.labels)

        self._ahead = {}
        try:
            for n in range(in_flight + 1):
                resize_ahead(n)
            for n, predictions in enumerate(self._run_batches(run, len(batches), in_flight)):
                resize_ahead(n + in_flight + 1)
                for index, prediction in zip(batches[n], predictions):
                    self._remember(keys[index], prediction)
                bar.update(len(batches[n]))
        finally:
            self._ahead = {}
        bar.close()
        return [replace(self._cache[key], name=item.name, source=item.source, scale=item.scale,
                        image=item.image) for key, item in zip(keys, items)]

    def _run_batches(self, run, count: int, in_flight: int):
        """``run(0)``, ``run(1)``... in order; with ``in_flight`` > 1, that many at once, each
        worker thread in its own CUDA stream on a GPU."""
        if in_flight == 1:
            yield from (run(n) for n in range(count))
            return
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import torch

        local = threading.local()
        device = torch.device(self.device)

        def in_stream(n):
            if device.type != "cuda":
                return run(n)
            if not hasattr(local, "stream"):
                local.stream = torch.cuda.Stream(device=device)
            with torch.cuda.stream(local.stream):
                return run(n)

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="d2nb-batch") as workers:
            futures = {n: workers.submit(in_stream, n) for n in range(min(in_flight, count))}
            for n in range(count):
                predictions = futures.pop(n).result()
                if n + in_flight < count:
                    futures[n + in_flight] = workers.submit(in_stream, n + in_flight)
                yield predictions

    def _forward(self, images: list) -> list:
        """The model's outputs for RGB ``images``: ``{"instances": ...}`` scaled to each picture
        (masks left as ``mask_probs`` for ``_to_predictions`` to paste), or the panoptic and
        semantic outputs."""
        import torch

        with torch.inference_mode():
            ahead = [self._ahead.pop(id(image), None) for image in images]
            pixels = [job.result() if job else self._input_tensor(image) for job, image in zip(ahead, images)]
            inputs = [{"image": t.to(self.device, non_blocking=True).permute(2, 0, 1).float(),
                       "height": image.shape[0], "width": image.shape[1]} for t, image in zip(pixels, images)]
            with torch.autocast("cuda", enabled=self._autocast):
                if not self._masks_in_boxes:
                    return self.model(inputs)
                raw = self.model.inference(inputs, do_postprocess=False)
                return [{"instances": _scaled_keeping_mask_probs(instances, item["height"], item["width"])}
                        for instances, item in zip(raw, inputs)]

    def _input_tensor(self, image: np.ndarray):
        """The picture as the model takes it (HxWxC uint8 tensor, the config's colour order),
        resized as ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` say with detectron2's own transform,
        so that the model sees exactly the pixels that ``DefaultPredictor`` and demo.py give it;
        in pinned memory for a GPU, so that its copy there does not wait."""
        import torch

        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        image = np.ascontiguousarray(image)
        if self.resize.short_edge_length[0]:  # INPUT.MIN_SIZE_TEST 0: as it is, as detectron2 does
            image = self.resize.get_transform(image).apply_image(image)
        # PIL's pictures are read-only arrays, which torch.from_numpy warns about
        tensor = torch.from_numpy(np.require(image, requirements="W"))
        return tensor.pin_memory() if self.device.startswith("cuda") else tensor

    def _remember(self, key, prediction) -> None:
        self._cache[key] = prediction
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


# --------------------------------------------------------------------------- building


_POOL = None


def _resize_pool():
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="d2nb-resize")
    return _POOL


def _build_yaml(choice, device: str, opts):
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T
    from detectron2.modeling import build_model

    from d2nb.modeling import register as register_model_parts
    from d2nb.checkpoint import AtomicCheckpointer

    register_model_parts()  # a d2nb recipe names d2nb's backbone and ROI heads
    cfg = get_cfg()
    cfg.set_new_allowed(True)  # config.yaml of a d2nb run carries d2nb's keys (SOLVER.OPTIMIZER)
    cfg.merge_from_file(choice.config)
    cfg.set_new_allowed(False)
    try:
        cfg.merge_from_list(list(opts or []))
    except (AssertionError, KeyError, ValueError) as error:
        raise D2nbError(f"opts {list(opts)!r} could not be applied: {error}",
                        "pass KEY VALUE pairs of existing config keys, e.g. MODEL.ROI_HEADS.NMS_THRESH_TEST 0.6") from None
    if choice.weights is None and not cfg.MODEL.WEIGHTS:
        raise D2nbError(f"config {choice.config!r} names no weights (its MODEL.WEIGHTS is empty)",
                        "pass weights= a .pth path or URL (or 'none' for random weights, for timing only)")
    cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS if choice.weights is None else choice.weights
    cfg.MODEL.DEVICE = device
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
        cfg.MODEL.RESNETS.NORM = "BN"  # random FrozenBN statistics overflow; only for weights='none'
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        AtomicCheckpointer(model).load(local_weights(cfg.MODEL.WEIGHTS), source=cfg.MODEL.WEIGHTS)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return model, resize, cfg.INPUT.FORMAT, cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None


def _build_lazy(choice, device: str, opts):
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data import transforms as T

    from d2nb.checkpoint import AtomicCheckpointer

    cfg = LazyConfig.load(choice.config)
    cfg = LazyConfig.apply_overrides(cfg, list(opts or []))
    model = instantiate(cfg.model).to(device).eval()
    if choice.weights:
        AtomicCheckpointer(model).load(local_weights(choice.weights), source=choice.weights)
    mapper = cfg.dataloader.test.mapper
    resize = next((a for a in instantiate(mapper.augmentations) if isinstance(a, T.ResizeShortestEdge)),
                  T.ResizeShortestEdge([800, 800], 1333))
    names = cfg.dataloader.train.dataset.names
    return model, resize, mapper.image_format, names if isinstance(names, str) else names[0]


def _num_classes(model) -> int | None:
    for module in model.modules():
        if hasattr(module, "num_classes") and isinstance(module.num_classes, int):
            return module.num_classes
    return None


def _labels(dataset_name, class_names, num_classes) -> Labels:
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name) if dataset_name else None
    names = class_names or zoo.dataset_class_names(dataset_name) or []
    if num_classes and len(names) != num_classes:
        logger.warning("%d class names for a model of %d classes (dataset %r); showing 'class N' instead. "
                       "Fix: write the names, as a json list, into %s beside the run's config.yaml",
                       len(names), num_classes, dataset_name, zoo.CLASS_NAMES_FILE)
        names = [f"class {i}" for i in range(num_classes)]
    to_id = getattr(meta, "thing_dataset_id_to_contiguous_id", None) if not class_names else None
    ids = {v: k for k, v in to_id.items()} if to_id else {}
    return Labels(list(names), [int(ids.get(i, i + 1)) for i in range(len(names))],
                  list(getattr(meta, "stuff_classes", None) or []) or None,
                  list(getattr(meta, "keypoint_names", None) or []) or None,
                  list(getattr(meta, "keypoint_connection_rules", None) or []) or None)


# --------------------------------------------------------------------------- outputs


def _pastes_masks(model) -> bool:
    """Whether d2nb pastes this model's masks itself (inside each box, see
    ``fast_inference.paste_crops``): R-CNN models with a mask head."""
    from detectron2.modeling import GeneralizedRCNN

    return isinstance(model, GeneralizedRCNN) and bool(getattr(model.roi_heads, "mask_on", False))


def _scaled_keeping_mask_probs(instances, height: int, width: int):
    """detectron2's ``detector_postprocess`` (boxes scaled to the picture, clipped, empty ones
    dropped) with the mask probabilities kept unpasted, as ``mask_probs`` ``(N, M, M)``."""
    from detectron2.modeling.postprocessing import detector_postprocess

    fields = instances.get_fields()
    if "pred_masks" in fields:
        fields["mask_probs"] = fields.pop("pred_masks")[:, 0]
    return detector_postprocess(instances, height, width)


def _to_predictions(outputs: list, items: list, labels: Labels) -> list:
    """``Prediction`` per picture of a batch; boxes, scores and classes of the whole batch come
    off the GPU in one copy, and so do the masks (pasted inside their boxes)."""
    import torch

    columns = []
    for output in outputs:
        instances = output.get("instances")
        if instances is None or not instances.has("pred_boxes"):
            columns.append(None)
            continue
        columns.append(torch.cat([instances.pred_boxes.tensor.float(), instances.scores.float()[:, None],
                                  instances.pred_classes.float()[:, None]], dim=1))
    present = [c for c in columns if c is not None]
    table = torch.cat(present).cpu().numpy() if present else np.zeros((0, 6), np.float32)
    counts = [0 if c is None else len(c) for c in columns]
    rows = np.split(table, np.cumsum(counts)[:-1])
    pasted = _paste_batch(outputs, rows, items)
    return [_to_prediction(output, item, labels, row, masks)
            for output, item, row, masks in zip(outputs, items, rows, pasted)]


def _paste_batch(outputs: list, rows: list, items: list) -> list:
    """Mask crops per picture for outputs holding ``mask_probs``: every instance of the batch
    pasted together (``fast_inference.paste_crops``); ``None`` for the other outputs."""
    import torch

    from d2nb.fast_inference import crop_windows, paste_crops

    holding = [o.get("instances") is not None and o["instances"].has("mask_probs") for o in outputs]
    pasted = [[] if has else None for has in holding]
    probs, boxes, windows, owners = [], [], [], []
    for n, (has, output, row, item) in enumerate(zip(holding, outputs, rows, items)):
        if has and len(row):
            probs.append(output["instances"].mask_probs)
            boxes.append(output["instances"].pred_boxes.tensor)
            windows.append(crop_windows(row[:, :4], *item.image.shape[:2]))
            owners += [n] * len(row)
    if probs:
        for owner, crop in zip(owners, paste_crops(torch.cat(probs), torch.cat(boxes), np.concatenate(windows))):
            pasted[owner].append(crop)
    return pasted


def _to_prediction(output: dict, item: LoadedImage, labels: Labels, row: np.ndarray, pasted) -> Prediction:
    height, width = item.image.shape[:2]
    boxes, scores, classes = row[:, :4].copy(), row[:, 4].copy(), row[:, 5].astype(np.int64)
    masks, keypoints = pasted, None
    if "instances" in output:
        instances = output["instances"]
        if masks is None and instances.has("pred_masks"):
            masks = _mask_crops(instances.pred_masks, boxes, height, width)
        if instances.has("pred_keypoints"):
            keypoints = instances.pred_keypoints.float().cpu().numpy()
    segments = None
    if "panoptic_seg" in output:
        panoptic, infos = output["panoptic_seg"]
        panoptic = panoptic.cpu().numpy()
        segments = np.full(panoptic.shape, -1, np.int32)
        for info in infos:
            if not info["isthing"]:
                segments[panoptic == info["id"]] = info["category_id"]
    elif "sem_seg" in output:
        segments = output["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int32)
    return Prediction(item.name, item.image, boxes, scores, classes, labels, masks, keypoints,
                      segments, item.source, item.scale)


def _mask_crops(pred_masks, boxes: np.ndarray, height: int, width: int) -> list:
    """Each instance's full-size mask (pasted by detectron2: panoptic models) cropped to its
    box and a pixel of margin, copied off the GPU in one transfer rather than one per instance."""
    import torch

    from d2nb.fast_inference import crop_windows

    windows = crop_windows(boxes, height, width)
    if not len(windows):
        return []
    flat = torch.cat([mask[top:bottom, left:right].reshape(-1)
                      for mask, (left, top, right, bottom) in zip(pred_masks, windows)])
    flat = flat.cpu().numpy().astype(bool)
    crops, start = [], 0
    for left, top, right, bottom in windows:
        size = (bottom - top) * (right - left)
        crops.append((int(left), int(top), flat[start:start + size].reshape(bottom - top, right - left)))
        start += size
    return crops


def _as_loaded(image, index: int) -> LoadedImage:
    if isinstance(image, LoadedImage):
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise D2nbError(f"image {index} is an array of shape {array.shape} and type {array.dtype}",
                        "pass RGB uint8 arrays (H x W x 3), or use d2nb.images.load_images")
    return LoadedImage(f"image_{index:04d}.png", "array", array, original_size=array.shape[:2])


def _image_key(image: np.ndarray) -> str:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predicting", unit="image", disable=not enabled or total == 0)


# --------------------------------------------------------------------------- saving


def predictions_to_coco(predictions: list, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                        classes=None) -> dict:
    """A COCO json of the kept instances: ``images`` (file names and sizes), ``categories``
    and ``annotations`` with a ``score`` each. ``pycocotools.coco.COCO`` reads it as a dataset,
    and ``COCO.loadRes(coco["annotations"])`` as results. Coordinates are those of the
    original files (very large pictures were scaled down for the model)."""
    from pycocotools import mask as mask_util

    labels = predictions[0].labels if predictions else Labels([], [])
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n} for i, n in zip(labels.category_ids, labels.class_names)]}
    for image_id, prediction in enumerate(predictions, start=1):
        height, width = prediction.image.shape[:2]
        size = (round(height / prediction.scale), round(width / prediction.scale))
        coco["images"].append({"id": image_id, "file_name": prediction.name, "height": size[0], "width": size[1]})
        for index in prediction.kept(score_threshold, classes):
            x0, y0, x1, y1 = (prediction.boxes[index] / prediction.scale).tolist()
            annotation = {"id": len(coco["annotations"]) + 1, "image_id": image_id,
                          "category_id": labels.category_ids[prediction.classes[index]],
                          "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                          "score": round(float(prediction.scores[index]), 4), "iscrowd": 0,
                          "area": round((x1 - x0) * (y1 - y0), 2)}
            if prediction.masks is not None:
                mask = prediction.full_mask(index)
                if prediction.scale != 1.0:
                    import cv2
                    mask = cv2.resize(mask.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST) > 0
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                annotation["area"] = int(mask.sum())
            if prediction.keypoints is not None:
                points = prediction.keypoints[index].copy()
                points[:, :2] /= prediction.scale
                annotation["keypoints"] = [round(float(v), 2) for v in points.ravel()]
            coco["annotations"].append(annotation)
    return coco


def save_outputs(predictions: list, output, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 classes=None, **draw_options) -> dict:
    """Write a visualisation per picture and ``predictions.json``, as demo.py's ``--output``.

    ``output`` is a folder (created; pictures keep their file names) or, for one picture,
    a file name such as ``"out.jpg"`` (the json is then ``out.predictions.json``).
    Returns ``{"images": [paths], "json": path}``.
    """
    import cv2

    from d2nb.draw import draw_predictions

    output = Path(output).expanduser()
    single_file = output.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") and len(predictions) == 1
    folder = output.parent if single_file else output
    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for prediction in predictions:
        path = output if single_file else folder / _free_name(prediction.name, used)
        if not single_file and path.resolve().parent != folder.resolve():  # _free_name makes plain names
            raise D2nbError(f"{prediction.name!r} would be saved outside {str(folder)!r}", "rename the picture")
        drawn = draw_predictions(prediction, score_threshold, classes, **draw_options)
        if not cv2.imwrite(str(path), drawn[:, :, ::-1]):
            raise D2nbError(f"could not write {str(path)!r}", "pass an output folder you can write to")
        written.append(str(path))
    json_path = output.with_suffix(".predictions.json") if single_file else folder / "predictions.json"
    json_path.write_text(json.dumps(predictions_to_coco(predictions, score_threshold, classes)))
    return {"images": written, "json": str(json_path)}


def _free_name(name: str, used: set) -> str:
    """A file name for ``name`` inside the output folder, unused so far (``used``)."""
    name = safe_file_name(name, "image.png")
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    suffix = suffix if suffix in (".jpg", ".jpeg", ".png") else ".png"
    candidate, n = f"{stem}{suffix}", 1
    while candidate in used:
        candidate, n = f"{stem}_{n}{suffix}", n + 1
    used.add(candidate)
    return candidate
