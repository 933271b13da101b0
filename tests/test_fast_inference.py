"""Speed-ups that must not change results: the separable ROIAlign of CPU training, masks
pasted inside their boxes, norms folded into convolutions and the float16 backbone."""

import numpy as np
import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, paste_masks_in_image
from torchvision.ops import roi_align

from d2nb.predict import postprocess
from d2nb.predict.postprocess import crop_windows, pack_bits, paste_crops, unpack_bits
from d2nb.predict.precision import fold_norms, half_precision_backbone
from d2nb.train.roi_align import ROIAlign, separable_roi_align, use_separable_roi_align


def random_rois(generator, count, images, size, max_side):
    """RoIs of every kind: inside, across the border, outside, and empty."""
    corner = torch.rand(count, 2, generator=generator) * (size + 40) - 20
    sides = torch.rand(count, 2, generator=generator) * max_side
    sides[:5] = 0  # degenerate boxes: torchvision returns zeros for them
    image = torch.randint(0, images, (count, 1), generator=generator).float()
    return torch.cat([image, corner, corner + sides], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_separable_roi_align_gives_torchvisions_values_and_gradients(aligned, sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(output_size * 10 + sampling_ratio)
    features = torch.randn(3, 8, 24, 20, generator=generator, requires_grad=True)
    rois = random_rois(generator, 60, 3, 96, 70)
    upstream = torch.randn(60, 8, output_size, output_size, generator=generator)
    expected = roi_align(features, rois, (output_size, output_size), 0.25, sampling_ratio, aligned)
    (expected * upstream).sum().backward()
    expected_grad, features.grad = features.grad.clone(), None
    ours = separable_roi_align(features, rois, (output_size, output_size), 0.25, sampling_ratio, aligned)
    (ours * upstream).sum().backward()
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(features.grad, expected_grad, atol=1e-5, rtol=1e-4)
    assert expected.abs().sum() > 0 and expected_grad.abs().sum() > 0


def test_cpu_training_models_use_the_separable_roi_align():
    from d2nb.train import Trainer, TrainSettings, build_config

    cfg = build_config(TrainSettings(gpus=0, output_dir="/tmp/d2nb-test-roi", monitor=False))
    model = Trainer.build_model(cfg)
    poolers = [m for m in model.modules() if "ROIAlign" in type(m).__name__]
    assert poolers and all(isinstance(m, ROIAlign) for m in poolers)
    from detectron2.modeling import build_model
    assert use_separable_roi_align(build_model(cfg)) == len(poolers)


@pytest.mark.parametrize("packed", [False, True], ids=["as_bools", "packed_as_from_a_gpu"])
def test_masks_pasted_inside_their_boxes_are_detectron2s_pasted_in_the_picture(monkeypatch, packed):
    generator = torch.Generator().manual_seed(0)
    height, width, count = 70, 90, 40
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) - 5
    boxes = torch.cat([corner, corner + 3 + torch.rand(count, 2, generator=generator) * 60], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    probs = torch.rand(count, 28, 28, generator=generator)
    probs[:4] = 1.0  # saturated masks reach the box edges
    expected = paste_masks_in_image(probs, boxes, (height, width)).numpy()
    monkeypatch.setattr(postprocess, "CANVAS_LIMIT", 20_000)  # several groups, as large pictures get
    if packed:  # what bool_to_host does with a GPU's masks, less the pinned copy
        monkeypatch.setattr(postprocess, "bool_to_host", lambda mask: unpack_bits(pack_bits(mask).numpy(), mask.shape[-1]))
    crops = paste_crops(probs, boxes, crop_windows(boxes.numpy(), height, width))
    for mask, (left, top, crop) in zip(expected, crops):
        pasted = np.zeros_like(mask)
        pasted[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        assert (pasted == mask).all()
    assert sum(crop.sum() for _, _, crop in crops) == expected.sum() > 0


@pytest.mark.parametrize("shape", [(3, 5, 13), (2, 4, 16), (1, 1, 1), (0, 3, 7), (4, 9, 250)])
def test_masks_packed_eight_pixels_a_byte_are_numpys_packbits_and_come_back_whole(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and np.array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=-1))
    back = unpack_bits(packed.numpy(), shape[-1])
    assert back.dtype == bool and np.array_equal(back, mask.numpy())


def test_folded_norms_compute_what_conv_then_norm_computed():
    torch.manual_seed(0)
    batch_norm = torch.nn.BatchNorm2d(6)
    batch_norm.running_mean.uniform_(-1, 1)
    batch_norm.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(6)
    frozen.weight.uniform_(0.5, 2)
    frozen.bias.uniform_(-1, 1)
    frozen.running_mean.uniform_(-1, 1)
    layers = torch.nn.Sequential(Conv2d(3, 6, 3, bias=False, norm=batch_norm), Conv2d(6, 6, 3, bias=True, norm=frozen)).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = layers(x)
        assert fold_norms(layers) == 2
        after = layers(x)
    assert all(m.norm is None for m in layers)
    assert torch.allclose(before, after, atol=1e-5)


def test_the_float16_backbone_finds_what_the_float32_model_finds():
    """On the CPU (float16 convolutions run there too, slowly): same boxes within a pixel for
    the confident detections of a randomly initialised recipe model."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from d2nb.modeling import register
    from d2nb.zoo import resolve_config

    register()
    cfg = get_cfg()
    cfg.set_new_allowed(True)
    cfg.merge_from_file(resolve_config("mask_rcnn_R_18_FPN_cpu.yaml")[0])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = [{"image": torch.randint(0, 255, (3, 128, 128)).float(), "height": 128, "width": 128}]
    with torch.no_grad():
        features32 = model.backbone(model.preprocess_image(images).tensor)
        half_precision_backbone(model, channels_last=True)
        features16 = model.backbone(model.preprocess_image(images).tensor)
    assert set(features16) == set(features32)
    for name, feature in features16.items():
        assert feature.dtype == torch.float32 and feature.is_contiguous()
        error = (feature - features32[name]).norm() / features32[name].norm()
        assert error < 1e-2, (name, error)
    assert model.backbone.size_divisibility == model.backbone.body.size_divisibility == 16  # res4 is the last stage


def test_two_batches_in_flight_give_the_predictions_of_one():
    """The GPU's pipelining (two worker threads, one CUDA stream each), run here on the CPU."""
    from d2nb.data.synthetic import draw_scene
    from d2nb.predict import Predictor

    rng = np.random.default_rng(1)
    pictures = [draw_scene(rng, 96, 128, 4)[0] for _ in range(7)]
    torch.manual_seed(0)
    predictor = Predictor("mask_rcnn_R_18_FPN_cpu.yaml", "none", device="cpu", score_floor=0.0)
    one = predictor.predict(pictures, batch_size=2, progress=False)
    predictor.set_score_floor(0.0)  # empties the cache
    predictor.batches_in_flight = 2
    two = predictor.predict(pictures, batch_size=2, progress=False)
    assert sum(map(len, one)) > 0
    for a, b in zip(one, two):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert all(np.array_equal(x[2], y[2]) and x[:2] == y[:2] for x, y in zip(a.masks, b.masks))


@pytest.mark.parametrize("size", [(96, 128), (1200, 900), (801, 1400), (800, 1000), (2999, 1777), (37, 1501)])
def test_resizing_on_the_gpu_gives_detectron2s_pixels_exactly(size):
    """``resize_on_gpu`` (run here on CPU tensors) against detectron2's PIL resize: enlarging,
    shrinking (PIL widens its filter), the longest side capped, and no change: every pixel the
    same, to the level."""
    from detectron2.data import transforms as T

    from d2nb.predict.batching import gpu_resizes, resize_on_gpu

    rng = np.random.default_rng(sum(size))
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[: size[0] // 2] = image[: size[0] // 2] // 4 * 4  # flat-ish areas beside noise
    image[-8:] = np.linspace(0, 255, size[1], dtype=np.uint8)[None, :, None]  # a smooth ramp
    resize = T.ResizeShortestEdge([800, 800], 1333)
    assert gpu_resizes(resize) and not gpu_resizes(T.ResizeShortestEdge([640, 800], 1333))
    expected = resize.get_transform(image).apply_image(image).astype(np.float32)
    ours = resize_on_gpu(torch.from_numpy(image).permute(2, 0, 1), resize).permute(1, 2, 0).numpy()
    assert ours.shape == expected.shape and ours.dtype == np.float32
    assert np.array_equal(ours, expected), (np.abs(ours - expected).max(), (ours != expected).mean())
    if size[0] * size[1] < 2_000_000:  # a stack of pictures of one size, resized together: each the same
        pair = torch.stack([torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(image[::-1].copy()).permute(2, 0, 1)])
        both = resize_on_gpu(pair, resize).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(both[0], expected)
        assert np.array_equal(both[1], resize.get_transform(image).apply_image(image[::-1].copy()).astype(np.float32))


def test_the_predictor_resizing_on_the_device_finds_what_it_finds_resizing_on_the_cpu():
    """The GPU's path (pictures copied as they are, resized on the device, BGR flipped there),
    taken here on the CPU, against detectron2's resize: the same detections (the wrong colour
    order gave 20-50% of them)."""
    from d2nb.data.synthetic import draw_scene
    from d2nb.predict import Predictor

    rng = np.random.default_rng(2)
    pictures = [draw_scene(rng, 90, 120, 4)[0] for _ in range(3)] + [draw_scene(rng, 300, 260, 4)[0]]
    torch.manual_seed(0)
    predictor = Predictor("mask_rcnn_R_18_FPN_cpu.yaml", "none", device="cpu", score_floor=0.0)
    predictor.input_format = "BGR"  # the zoo's configs: the flip must happen on the device too
    assert not predictor._resize_on_gpu
    on_cpu = predictor.predict(pictures, batch_size=2, progress=False)
    predictor.clear_cache()
    predictor._resize_on_gpu = True
    on_device = predictor.predict(pictures, batch_size=2, progress=False)
    for a, b in zip(on_cpu, on_device):  # the same pixels, so the same detections, to the bit
        assert len(a) > 0 and len(a) == len(b)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.classes, b.classes)


@pytest.mark.parametrize("empty_boxes", [0, 3])
def test_a_batch_scaled_at_once_is_detector_postprocess_picture_by_picture(empty_boxes):
    import copy

    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(empty_boxes)
    raw = []
    for count, (height, width) in zip([20, 0, 7, 13], [(800, 1066), (800, 1201), (613, 800), (800, 800)]):
        corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([width, height]) * 1.1 - 5
        boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
        boxes[:empty_boxes, 2] = boxes[:empty_boxes, 0]  # as wide as nothing: detector_postprocess drops them
        raw.append(Instances((height, width), pred_boxes=Boxes(boxes), scores=torch.rand(count, generator=generator),
                             pred_classes=torch.randint(0, 4, (count,), generator=generator),
                             pred_masks=torch.rand(count, 1, 28, 28, generator=generator)))
    sizes = [(480, 640), (333, 500), (1000, 1305), (77, 77)]
    got = postprocess.scaled_batch(copy.deepcopy(raw), sizes)
    expected = [postprocess.scaled_keeping_mask_probs(copy.deepcopy(x), h, w) for x, (h, w) in zip(raw, sizes)]
    assert sum(map(len, expected)) <= 40 - 3 * empty_boxes  # the empty boxes are gone
    for g, e in zip(got, expected):
        assert g.image_size == e.image_size and len(g) == len(e)
        assert torch.equal(g.pred_boxes.tensor, e.pred_boxes.tensor)
        assert torch.equal(g.scores, e.scores) and torch.equal(g.pred_classes, e.pred_classes)
        assert torch.equal(g.mask_probs, e.mask_probs)
