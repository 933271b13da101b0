"""Fast mode's switches: what it changes in a config, and that its batched gradient clipping
gives exactly what detectron2's per-parameter clipping gives."""

import copy

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.solver.build import maybe_add_gradient_clipping

from d2nb.train import Trainer, apply_fast_mode, clip_per_parameter_foreach


def _zoo_cfg(name):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(name))
    return cfg


@pytest.mark.parametrize("name, masks", [("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", True),
                                         ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", False)])
def test_fast_mode_config(name, masks):
    cfg = _zoo_cfg(name)
    apply_fast_mode(cfg)
    assert cfg.SOLVER.AMP.ENABLED and cfg.D2NB_TF32 and cfg.D2NB_FOREACH_CLIP and cfg.D2NB_BATCHED_HEADS
    assert cfg.D2NB_FILE_SYSTEM_SHARING and cfg.D2NB_FAST_STEP
    assert cfg.INPUT.MASK_FORMAT == ("bitmask" if masks else "polygon")
    assert cfg.DATALOADER.NUM_WORKERS >= 1


def _clip_cfg(max_norm):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = max_norm
    return cfg


def test_batched_clipping_equals_detectron2_per_parameter_clipping():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.LazyLinear(5))
    model(torch.randn(2, 3, 12, 12))
    twin = copy.deepcopy(model)
    theirs = maybe_add_gradient_clipping(_clip_cfg(0.5), torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))
    ours = clip_per_parameter_foreach(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), 0.5)
    for step in range(3):
        for a, b in zip(model.parameters(), twin.parameters()):
            # gradients from tiny (left alone) to large (clipped)
            a.grad = torch.randn_like(a) * 10.0 ** (step - 1)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a.grad, b.grad)
            torch.testing.assert_close(a, b)
    norms = [p.grad.norm().item() for p in model.parameters()]
    assert max(norms) == pytest.approx(0.5, rel=1e-4)  # the large gradients were clipped
    model[0].weight.grad = None  # a parameter without a gradient is skipped, as detectron2 skips it
    ours.step()


def test_trainer_uses_batched_clipping_only_in_fast_mode():
    model = torch.nn.Linear(4, 2)
    cfg = _clip_cfg(1.0)
    assert "optimizer_wgc_step" in type(Trainer.build_optimizer(cfg, model)).step.__qualname__  # detectron2's
    cfg.set_new_allowed(True)
    cfg.D2NB_FOREACH_CLIP = True
    assert "clip_per_parameter_foreach" in type(Trainer.build_optimizer(cfg, model)).step.__qualname__


def test_fast_mode_loader_workers_hand_tensors_over_by_file_name(tmp_path):
    from d2nb.train import TrainSettings, build_config

    cfg = build_config(TrainSettings(gpus=0, output_dir=str(tmp_path), weights="none", ims_per_batch=2, max_iter=1))
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 1
    cfg.set_new_allowed(True)
    cfg.D2NB_FILE_SYSTEM_SHARING = True
    before = torch.multiprocessing.get_sharing_strategy()
    try:
        batch = next(iter(Trainer.build_train_loader(cfg)))
        assert torch.multiprocessing.get_sharing_strategy() == "file_system"
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    assert len(batch) == 2 and all(x["image"].dtype == torch.uint8 and len(x["instances"]) > 0 for x in batch)
