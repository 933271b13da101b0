"""Fast mode's step (d2nb.train.fast_step): the same training as detectron2's step, on the CPU.

The GPU is what the step saves waits on; what these tests hold is that nothing else changes:
the same weights after the same batches (gradient clipping on unscaled gradients), the same
metrics, an overflowing step skipped as GradScaler skips it, and a feed that hands over every
batch in order, raises the loader's error, and lets go of the loader when closed."""

import copy

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import SimpleTrainer
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from d2nb.train import Trainer, TrainSettings, build_config, clip_per_parameter_foreach
from d2nb.train.fast_step import DeviceFeed, FastStepTrainer, fused_sgd, to_device


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return build_config(TrainSettings(gpus=0, output_dir=str(tmp_path_factory.mktemp("fast-step")), max_iter=10,
                                      monitor=False))


def _batches(cfg, count: int, ims: int = 2) -> list:
    mapper = DatasetMapper(cfg, is_train=True)
    records = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    return [[mapper(record) for record in records[i * ims:(i + 1) * ims]] for i in range(count)]


def _train(loop, steps: int) -> list:
    with EventStorage(0) as storage:
        loop.storage = storage
        for step in range(steps):
            loop.iter = storage.iter = step
            torch.manual_seed(step)  # the heads' sampling draws the same numbers in both loops
            loop.run_step()
        return [value for value, _ in storage.history("total_loss").values()]


def test_the_fast_step_trains_the_model_as_detectron2s_step_does(recipe):
    torch.manual_seed(0)
    model = Trainer.build_model(recipe)
    twin = copy.deepcopy(model)
    batches = _batches(recipe, 3)

    def sgd(module, **kernel):
        return clip_per_parameter_foreach(torch.optim.SGD(module.parameters(), lr=0.02, momentum=0.9, **kernel), 0.5)

    theirs = SimpleTrainer(twin, copy.deepcopy(batches), sgd(twin, foreach=True))
    ours = FastStepTrainer(model, copy.deepcopy(batches), sgd(model, fused=True), torch.amp.GradScaler("cpu"),
                           device="cpu")
    try:
        their_losses, our_losses = _train(theirs, 3), _train(ours, 3)
    finally:
        ours.close()
    # the scaler multiplied the loss by 2**16 and unscaled the gradients before clipping them
    assert our_losses == pytest.approx(their_losses, rel=1e-4)
    assert their_losses[-1] != their_losses[0]  # it trained
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


class _TwoLosses(torch.nn.Module):
    def __init__(self, size=3):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size))

    def forward(self, batch):
        x = torch.stack([item["x"] for item in batch])
        return {"loss_a": (x * self.weight).sum(), "loss_b": self.weight.square().sum()}


def test_an_overflowing_step_is_skipped_and_the_next_one_trains():
    model = _TwoLosses()
    batches = [[{"x": torch.full((3,), 1e34)}], [{"x": torch.ones(3)}]]  # 1e34 * 2**16 overflows float32
    scaler = torch.amp.GradScaler("cpu")
    loop = FastStepTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1, fused=True), scaler,
                           device="cpu")
    with EventStorage(0) as storage:
        loop.storage = storage
        loop.run_step()
        assert torch.equal(model.weight.detach(), torch.ones(3))  # skipped, on the device
        assert scaler.get_scale() == 2.0 ** 15
        assert storage.latest()["loss_a"][0] == pytest.approx(3e34)  # the metrics still hold the step's losses
        storage.iter = 1
        loop.iter = 1
        loop.run_step()
    torch.testing.assert_close(model.weight.detach(), torch.full((3,), 1 - 0.1 * 3))  # d/dw (x.w + |w|^2) = 1 + 2w
    loop.close()


def test_the_feed_hands_over_every_batch_in_order_then_stops():
    batches = [[{"image": torch.full((3, 4, 4), i, dtype=torch.uint8), "file_name": f"{i}.png"}] for i in range(5)]
    feed = DeviceFeed(batches, "cpu")
    assert [(batch[0]["file_name"], int(batch[0]["image"][0, 0, 0])) for batch in feed] == \
        [(f"{i}.png", i) for i in range(5)]
    with pytest.raises(StopIteration):
        next(feed)
    feed.close()


def test_the_feed_raises_the_loaders_error_where_its_batch_would_be():
    def batches():
        yield [{"x": torch.zeros(1)}]
        raise ValueError("annotation 7 has no segmentation")

    feed = DeviceFeed(batches(), "cpu")
    next(feed)
    with pytest.raises(ValueError, match="annotation 7"):
        next(feed)
    feed.close()


def test_a_loader_that_fails_at_once_fails_the_first_step():
    def batches():
        raise FileNotFoundError("images/0001.jpg")
        yield

    feed = DeviceFeed(batches(), "cpu")
    with pytest.raises(FileNotFoundError, match="0001"):
        next(feed)
    feed.close()


def test_closing_the_feed_stops_its_thread_while_the_loader_has_more():
    def endless():
        while True:
            yield [{"x": torch.zeros(1)}]

    feed = DeviceFeed(endless(), "cpu")
    next(feed)
    feed.close()
    assert not feed._thread.is_alive()


def test_a_batch_goes_to_the_device_field_by_field():
    instances = Instances((4, 6), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 3.0]])), gt_classes=torch.tensor([1]),
                          gt_masks=BitMasks(torch.ones(1, 4, 6, dtype=torch.bool)))
    polygons = PolygonMasks([[[0.0, 0.0, 2.0, 0.0, 2.0, 3.0]]])
    batch = [{"image": torch.zeros(3, 4, 6), "instances": instances, "height": 4, "file_name": "a.png"}]
    moved = to_device(batch, torch.device("cpu"))[0]
    assert moved["height"] == 4 and moved["file_name"] == "a.png"
    assert isinstance(moved["instances"].gt_boxes, Boxes) and isinstance(moved["instances"].gt_masks, BitMasks)
    assert moved["instances"].image_size == (4, 6)
    assert torch.equal(moved["instances"].gt_boxes.tensor, instances.gt_boxes.tensor)
    with_polygons = Instances((4, 6), gt_masks=polygons)
    assert to_device([{"instances": with_polygons}], torch.device("cpu"))[0]["instances"].gt_masks is polygons


def test_resuming_keeps_this_runs_optimizer_kernel(recipe):
    trainer = Trainer(recipe)
    optimizer = trainer._trainer.optimizer
    assert all(group["fused"] for group in optimizer.param_groups)  # the CPU recipe's fused AdamW
    saved = trainer.state_dict()
    for group in saved["_trainer"]["optimizer"]["param_groups"]:  # as a run with foreach kernels saved it
        group["fused"], group["foreach"] = False, True
    trainer.load_state_dict(saved)
    assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)


def test_a_skipped_first_step_leaves_the_fused_sgds_momentum_as_detectron2s_sgd_has_it():
    # torch's own fused SGD keeps uninitialised buffers when its first step is skipped (d2nb.train.fast_step.fused_sgd)
    torch.manual_seed(0)
    model = _TwoLosses(4096)
    twin = copy.deepcopy(model)
    batches = [[{"x": torch.full((4096,), 1e34)}], [{"x": torch.randn(4096)}], [{"x": torch.randn(4096)}]]
    ours = FastStepTrainer(model, copy.deepcopy(batches), fused_sgd(model.parameters(), lr=0.1, momentum=0.9),
                           torch.amp.GradScaler("cpu"), device="cpu")
    foreach = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, foreach=True)
    scaler = torch.amp.GradScaler("cpu")
    with EventStorage(0) as storage:
        ours.storage = storage
        for batch in batches:
            dirty = torch.full((4096,), float("nan"))  # freed memory an uninitialised buffer would reuse
            del dirty
            ours.run_step()
            losses = twin([batch[0]])  # AMPTrainer's order: scale, backward, step (skipped on overflow), update
            foreach.zero_grad()
            scaler.scale(sum(losses.values())).backward()
            scaler.step(foreach)
            scaler.update()
    ours.close()
    torch.testing.assert_close(model.weight.detach(), twin.weight.detach())
    assert not torch.equal(model.weight.detach(), torch.ones(4096))


def test_a_trainer_in_fast_step_mode_trains_and_lets_go_of_its_feed(tmp_path):
    # fast mode sets D2NB_FAST_STEP on a GPU; on the CPU the same trainer runs it in float32
    import threading

    cfg = build_config(TrainSettings(gpus=0, output_dir=str(tmp_path), max_iter=3, monitor=False, config=None,
                                     opts=["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.002", "SOLVER.AMP.ENABLED", "True",
                                           "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]))
    cfg.defrost()
    cfg.D2NB_FAST_STEP = True
    cfg.freeze()
    with pytest.warns(UserWarning):  # detectron2's AMPTrainer makes a CUDA GradScaler, disabled without CUDA
        trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, FastStepTrainer)
    assert all(group["fused"] for group in trainer._trainer.optimizer.param_groups)
    trainer.train()
    assert trainer.iter == 3 and len(trainer.storage.history("total_loss").values()) == 3
    assert trainer._trainer._feed is None
    assert not [t for t in threading.enumerate() if t.name == "d2nb-device-feed"]
