"""Fast mode's training step: detectron2's AMP step without the waits for the GPU.

detectron2's ``AMPTrainer.run_step`` makes the host wait for the GPU three times a step, each
time just after ``backward()`` has queued the whole backward pass: ``write_metrics`` reads every
loss with ``.item()``, ``GradScaler.step`` reads its found-inf flag before calling a non-fused
optimizer, and the next step's pictures go to the GPU by blocking copies from pageable memory
(a copy that waits for the GPU to finish what it has queued). While the host waits, it cannot
fetch, copy or queue the next step's forward; the GPU then idles while the host catches up.
``FastStepTrainer`` does the same arithmetic with none of those waits:

- ``DeviceFeed``: a thread takes the next batches from the loader and pins their tensors; the
  step hands them to the GPU with non-blocking copies (the model's own ``.to(device)`` calls
  then find them there);
- the losses are copied to pinned host memory behind an event as soon as the forward has
  queued them, and written to the ``EventStorage`` after ``backward()``, by which time the GPU
  has long computed them (the same values, at the same iteration, and the same NaN check);
- a fused optimizer (``fused_sgd``, which ``Trainer.build_optimizer`` builds) takes the
  scaler's found-inf flag on the GPU and skips the update there; gradients are unscaled
  before ``step`` so that gradient clipping sees them as detectron2's AMP step shows them.
"""

from __future__ import annotations

import queue
import threading
import time

import torch
from detectron2.engine import AMPTrainer
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints, RotatedBoxes

_TENSOR_HOLDERS = (Boxes, RotatedBoxes, BitMasks, Keypoints)  # each built from one ``tensor``


def to_device(batch: list, device: torch.device) -> list:
    """``batch`` (detectron2's list of dataset dicts) with every tensor, and every tensor in
    its ``Instances``, on ``device``; non-blocking copies from pinned memory. Other values and
    the dicts themselves are left as they are."""
    return [{key: _to_device(value, device) for key, value in item.items()} for item in batch]


def pin(batch: list) -> list:
    """``batch`` with its tensors, and those in its ``Instances``, in pinned (page-locked) host memory."""
    return to_device(batch, None)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        if device is None:
            return value if value.is_pinned() else value.pin_memory()
        return value.to(device, non_blocking=True)
    if isinstance(value, Instances):
        moved = Instances(value.image_size)
        for name, field in value.get_fields().items():
            moved.set(name, _to_device(field, device))
        return moved
    if isinstance(value, _TENSOR_HOLDERS):
        return type(value)(_to_device(value.tensor, device))
    if device is not None and hasattr(value, "to"):  # e.g. PolygonMasks: lists of numpy arrays
        return value.to(device)
    return value


def fused_sgd(params, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    """``torch.optim.SGD(fused=True)`` with its momentum buffers made at zero.

    torch's fused SGD makes its buffers with ``empty_like`` and fills them in the kernel of the
    first step; when the scaler skips that step (AMP's first steps overflow at the initial scale
    of 2**16), the kernel returns before filling them and every later step adds that garbage:
    an R-50 trained from scratch diverged at its fifth iteration on the H200. A zero buffer is
    the same first update (``momentum * 0 + grad``: detectron2's SGD has no dampening)."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                fused=True)
    if momentum:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    return optimizer


class DeviceFeed:
    """Batches from ``batches`` on ``device``: the first is fetched here, then a daemon thread
    fetches up to ``depth`` batches ahead and pins them (on a CUDA device); ``next`` hands one
    to the GPU with non-blocking copies. An error in the loader is raised by the ``next`` call that would have returned its
    batch; ``close`` stops the thread and lets go of the loader (and its worker processes)."""

    _END = object()

    def __init__(self, batches, device, depth: int = 2):
        self.device = torch.device(device)
        self._pinned = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        batches = iter(batches)
        # the first batch here: a loader starts its worker processes on its first batch, and
        # they are forked from this (the main) thread, as detectron2's own loop forks them
        if self._take(batches):
            self._thread = threading.Thread(target=self._fill, args=(batches,), name="d2nb-device-feed", daemon=True)
            self._thread.start()
        else:
            self._thread = threading.Thread(target=lambda: None)

    def _fill(self, batches) -> None:
        while not self._stop.is_set() and self._take(batches):
            pass

    def _take(self, batches) -> bool:
        """Queue the next batch (pinned), or the end, or the loader's error; False after the last."""
        try:
            batch = next(batches)
        except StopIteration:
            self._put(self._END)
            return False
        except BaseException as error:  # handed to the training thread, which raises it
            self._put(error)
            return False
        self._put(pin(batch) if self._pinned else batch)
        return True

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        return self

    def __next__(self) -> list:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # every later call ends too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return to_device(item, self.device)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        while not self._queue.empty():  # pinned batches not taken
            self._queue.get_nowait()


class FastStepTrainer(AMPTrainer):
    """``AMPTrainer`` whose step makes the host wait for the GPU only where the model itself
    does (see the module's docstring). Same losses, same metrics, same checkpoints."""

    def __init__(self, model, data_loader, optimizer, grad_scaler=None, device="cuda"):
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler)
        self.device = torch.device(device)
        self._feed: DeviceFeed | None = None

    @classmethod
    def replacing(cls, trainer: AMPTrainer, device) -> "FastStepTrainer":
        """The fast step for the model, loader, optimizer and scaler of detectron2's ``trainer``."""
        return cls(trainer.model, trainer.data_loader, trainer.optimizer, trainer.grad_scaler, device)

    @property
    def _data_loader_iter(self):
        if self._data_loader_iter_obj is None:
            self._feed = DeviceFeed(self.data_loader, self.device)
            self._data_loader_iter_obj = self._feed
        return self._data_loader_iter_obj

    def run_step(self):
        assert self.model.training, "[FastStepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        # float16 on a GPU as AMPTrainer; float32 on the CPU, where the tests run it
        with torch.autocast(self.device.type, dtype=self.precision, enabled=self.device.type == "cuda"):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        on_host = LossesOnHost(loss_dict)  # queued behind the forward; read after backward
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(on_host.values(), data_time)
        self.grad_scaler.unscale_(self.optimizer)  # on the GPU: clipping sees true gradients
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def after_train(self):
        super().after_train()
        self.close()

    def close(self) -> None:
        """Stop the feed thread and let go of the loader's iterator (and so its workers)."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        self._data_loader_iter_obj = None


class LossesOnHost:
    """The scalar losses of ``loss_dict``, copied to pinned host memory without waiting: the
    copy is queued behind the kernels that compute them, and ``values`` waits for that copy
    alone (an event), not for what the GPU was given afterwards."""

    def __init__(self, loss_dict: dict):
        self.names = list(loss_dict)
        stacked = torch.stack([value.detach().float().reshape(()) for value in loss_dict.values()])
        self._event = None
        if stacked.is_cuda:
            self._host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            self._host.copy_(stacked, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = stacked

    def values(self) -> dict:
        if self._event is not None:
            self._event.synchronize()
        return dict(zip(self.names, self._host.unbind()))
