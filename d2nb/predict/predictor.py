"""The predictor: a detectron2 model ready to run on pictures, several per forward pass.

    predictor = Predictor("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")  # zoo checkpoint
    predictions = predictor.predict(load_images("photos/*.jpg"), batch_size=4)

The model keeps every detection scoring at least ``score_floor`` (0.05, detectron2's own
evaluation threshold); ``score_threshold`` is applied afterwards, when drawing, counting and
saving. Pictures already predicted by the same predictor are served from its cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np

from d2nb import zoo
from d2nb.batched_heads import use_batched_heads
from d2nb.errors import D2nbError
from d2nb.predict.batching import (as_loaded, gpu_resizes, image_key, progress_bar, resize_on_gpu, resize_pool,
                                   run_batches)
from d2nb.predict.model import build_lazy, build_yaml, class_labels, model_num_classes
from d2nb.predict.postprocess import pastes_masks, scaled_batch, to_predictions
from d2nb.predict.precision import graphed_backbone, half_precision_backbone, tf32_matmul
from d2nb.predict.tiling import DEFAULT_OVERLAP, predict_tiled, tiling_on

SCORE_FLOOR = 0.05
CACHE_SIZE = 512  # predictions kept per predictor
GPU_BATCHES_IN_FLIGHT = 2  # batches run at once on a GPU, each in its own thread and stream


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
    ``amp`` runs the backbone in float16 on a GPU (see ``d2nb.predict.precision``);
    ``cuda_graphs`` (on a GPU, without ``tta`` or ``built``) launches the backbone as CUDA graphs, one per
    input shape, float32 or not (the same kernels: the same features, fewer launches);
    ``batched_heads`` (on a GPU, without ``built``) finds the RPN's proposals for a whole batch
    at once (``d2nb.batched_heads``: the same proposals, one host synchronisation a batch);
    ``batches_in_flight`` (2 on a GPU, 1 on the CPU) is how many batches ``predict`` runs at once.
    ``opts`` are ``KEY VALUE`` config options (yaml configs)
    or ``key=value`` overrides (LazyConfig ``.py`` configs), as demo.py's ``--opts``.
    ``tta`` runs every picture through detectron2's test-time augmentation (``d2nb.tta``:
    several sizes and a flip, merged), R-CNN models of yaml configs only.
    ``built``: a model already built, as ``d2nb.predict.model.yaml_parts(cfg, model)`` gives it
    (``choice`` then only names it), instead of building one from ``config``.
    Raises ``D2nbError`` for a config, weights file or URL it cannot load.
    """

    def __init__(self, config=None, weights=None, device="auto", amp: bool = False, opts=(),
                 score_floor: float = SCORE_FLOOR, choice: zoo.ModelChoice | None = None, tta: bool = False,
                 built: tuple | None = None, cuda_graphs: bool = True, batched_heads: bool = True):
        self.choice = choice or zoo.resolve_model(config, weights)
        self.device = resolve_device(device)
        self.amp = bool(amp) and self.device.startswith("cuda")
        if built is not None:
            self.model, self.resize, self.input_format, dataset, cfg = built
        elif self.choice.config.endswith(".py"):
            self.model, self.resize, self.input_format, dataset, cfg = build_lazy(self.choice, self.device, opts)
        else:
            self.model, self.resize, self.input_format, dataset, cfg = build_yaml(self.choice, self.device, opts)
        self._tta = _tta_model(cfg, self.model) if tta else None
        if self._tta is not None:
            from d2nb.tta import describe_tta

            self._tta_text = describe_tta(cfg).split(": ", 1)[1]
        self.labels = class_labels(dataset, self.choice.class_names, model_num_classes(self.model))
        # AMP: the backbone in float16, the heads (boxes, scores) in float32; autocast only for
        # models without a detectron2 backbone (see d2nb.predict.precision)
        self._autocast = self.amp and not hasattr(self.model, "backbone")
        # a model handed in (``built``) stays as it is: it may be a training run's own
        graphs = bool(cuda_graphs) and self.device.startswith("cuda") and self._tta is None and built is None
        if batched_heads and self.device.startswith("cuda") and built is None:
            use_batched_heads(self.model)  # the same proposals, found for the whole batch at once
        if self.amp and not self._autocast:
            half_precision_backbone(self.model, cuda_graphs=graphs)
        elif graphs and hasattr(self.model, "backbone") and hasattr(self.model.backbone, "size_divisibility"):
            graphed_backbone(self.model)
        self._masks_in_boxes = pastes_masks(self.model)
        self._resize_on_gpu = self.device.startswith("cuda") and gpu_resizes(self.resize)
        self._cache = OrderedDict()
        self.batches_in_flight = GPU_BATCHES_IN_FLIGHT if self.device.startswith("cuda") else 1
        self._ahead = {}  # id(picture): its resizing, started while the batch before it runs
        self.set_score_floor(score_floor)

    def set_score_floor(self, score_floor: float) -> None:
        """The lowest score the model keeps (the explorer's slider starts there)."""
        self.score_floor = float(score_floor)
        self.clear_cache()
        for module in self.model.modules():
            if hasattr(module, "test_score_thresh"):  # box predictors, RetinaNet, FCOS
                module.test_score_thresh = self.score_floor

    def clear_cache(self) -> None:
        """Forget the pictures predicted so far (each prediction holds its picture)."""
        self._cache.clear()

    def describe(self) -> str:
        names = self.labels.class_names
        return "\n".join([
            f"{'model':>10}: {self.choice.label}",
            f"{'weights':>10}: {self._weights_text()}",
            f"{'classes':>10}: {len(names)}: {', '.join(names[:12])}" + (" ..." if len(names) > 12 else ""),
            f"{'device':>10}: {self.device}" + (" with AMP" if self.amp else ""),
            f"{'input':>10}: shortest side {self.resize.short_edge_length[0]}, longest at most {self.resize.max_size}",
        ] + ([f"{'tta':>10}: {self._tta_text}"] if self._tta is not None else []))

    def _weights_text(self) -> str:
        if self.choice.weights is None:
            return "the config's MODEL.WEIGHTS"
        return self.choice.weights or "none (random initialisation)"

    def predict(self, images, batch_size: int = 4, progress: bool = True, tile=None,
                tile_overlap: float = DEFAULT_OVERLAP) -> list:
        """``Prediction`` for every picture that loaded (``LoadedImage`` with an error are
        skipped; plain RGB arrays are accepted too), running ``batch_size`` per forward pass.

        ``tile`` (pixels): large pictures run as overlapping ``tile`` x ``tile`` windows at full
        resolution plus the whole picture, merged back (``d2nb.predict.tiling``), neighbours
        sharing ``tile_overlap`` of a tile.

        On a GPU two batches are in flight at once (``batches_in_flight``), each in its own
        thread and CUDA stream: while one waits for the GPU (detectron2's post-processing
        synchronises often), the other runs its Python. Pictures are resized ahead, in
        threads, as the batches need them.
        """
        if tiling_on(tile):
            return predict_tiled(self, images, tile, tile_overlap, batch_size, progress)
        items = [as_loaded(image, i) for i, image in enumerate(images)]
        items = [item for item in items if item.ok]
        pool = resize_pool()
        keys = list(pool.map(image_key, [item.image for item in items]))  # hashing frees the GIL
        found = {key: self._cache[key] for key in keys if key in self._cache}  # this call's, whatever the cache drops
        todo = [i for i, key in enumerate(keys) if key not in found]
        batch_size = max(1, int(batch_size))
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = progress_bar(len(todo), progress)
        in_flight = max(1, min(int(self.batches_in_flight), len(batches)))

        def resize_ahead(n):  # batch n's pictures, resized in threads while earlier batches run
            for i in batches[n] if n < len(batches) else []:
                self._ahead[id(items[i].image)] = pool.submit(self._input_tensor, items[i].image)

        def run(n):
            batch = batches[n]
            return to_predictions(self._forward([items[i].image for i in batch]), [items[i] for i in batch],
                                   self.labels)

        self._ahead = {}
        try:
            for n in range(in_flight + 1):
                resize_ahead(n)
            with tf32_matmul(self.amp):  # set here, once, for every batch thread
                for n, predictions in enumerate(run_batches(run, len(batches), in_flight, self.device)):
                    resize_ahead(n + in_flight + 1)
                    for index, prediction in zip(batches[n], predictions):
                        found[keys[index]] = prediction
                        self._remember(keys[index], prediction)
                    bar.update(len(batches[n]))
        finally:
            self._ahead = {}
        bar.close()
        return [replace(found[key], name=item.name, source=item.source, scale=item.scale,
                        image=item.image) for key, item in zip(keys, items)]

    def _forward(self, images: list) -> list:
        """The model's outputs for RGB ``images``: ``{"instances": ...}`` scaled to each picture
        (masks left as ``mask_probs`` for ``to_predictions`` to paste), or the panoptic and
        semantic outputs."""
        import torch

        if self._tta is not None:
            return self._forward_tta(images)
        with torch.inference_mode():
            ahead = [self._ahead.pop(id(image), None) for image in images]
            pixels = [job.result() if job else self._input_tensor(image) for job, image in zip(ahead, images)]
            inputs = [{"image": t, "height": image.shape[0], "width": image.shape[1]}
                      for t, image in zip(self._on_device(pixels), images)]
            with torch.autocast("cuda", enabled=self._autocast):
                if not self._masks_in_boxes:
                    return self.model(inputs)
                raw = self.model.inference(inputs, do_postprocess=False)
                return [{"instances": instances}
                        for instances in scaled_batch(raw, [(item["height"], item["width"]) for item in inputs])]

    def _forward_tta(self, images: list) -> list:
        """Test-time augmentation: detectron2's wrapper resizes the original pictures itself
        (every ``TEST.AUG.MIN_SIZES``), flips them, and merges; masks come back pasted."""
        import torch

        for image in images:
            self._ahead.pop(id(image), None)
        inputs = [{"image": torch.from_numpy(np.ascontiguousarray(
                   image[:, :, ::-1] if self.input_format == "BGR" else image)).permute(2, 0, 1),
                   "height": image.shape[0], "width": image.shape[1]} for image in images]
        with torch.inference_mode():
            return self._tta(inputs)

    def _input_tensor(self, image: np.ndarray):
        """The picture as the model takes it (HxWxC uint8 tensor, the config's colour order),
        resized as ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` say with detectron2's own transform,
        so that the model sees exactly the pixels that ``DefaultPredictor`` and demo.py give it.
        On a GPU: the picture as it is, in pinned memory (its copy there does not wait), for
        ``_on_device`` to resize there (``resize_on_gpu``: the same pixels within one level)."""
        import torch

        if self._resize_on_gpu:
            tensor = torch.from_numpy(np.require(image, requirements="W"))
            return tensor.pin_memory() if self.device.startswith("cuda") else tensor
        if self.input_format == "BGR":
            image = image[:, :, ::-1]
        image = np.ascontiguousarray(image)
        if self.resize.short_edge_length[0]:  # INPUT.MIN_SIZE_TEST 0: as it is, as detectron2 does
            image = self.resize.get_transform(image).apply_image(image)
        # PIL's pictures are read-only arrays, which torch.from_numpy warns about
        tensor = torch.from_numpy(np.require(image, requirements="W"))
        return tensor.pin_memory() if self.device.startswith("cuda") else tensor

    def _on_device(self, pixels: list) -> list:
        """``_input_tensor``'s pixels as the model's CxHxW float inputs, on its device; pictures
        of one size resized there together."""
        import torch

        tensors = [p.to(self.device, non_blocking=True).permute(2, 0, 1) for p in pixels]
        if not self._resize_on_gpu:
            return [t.float() for t in tensors]
        if self.input_format == "BGR":
            tensors = [t.flip(0) for t in tensors]
        by_size = {}
        for n, t in enumerate(tensors):
            by_size.setdefault(tuple(t.shape), []).append(n)
        for same in by_size.values():
            stack = tensors[same[0]][None] if len(same) == 1 else torch.stack([tensors[n] for n in same])
            for n, resized in zip(same, resize_on_gpu(stack, self.resize)):
                tensors[n] = resized
        return tensors

    def _remember(self, key, prediction) -> None:
        self._cache[key] = prediction
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)


def _tta_model(cfg, model):
    from d2nb.tta import with_tta

    if cfg is None:
        raise D2nbError("test-time augmentation runs on yaml configs; this is a LazyConfig (.py)",
                        "pass tta=False, or the model's yaml config")
    return with_tta(cfg, model)
