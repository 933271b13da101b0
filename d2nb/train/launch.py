"""Training in several processes: detectron2's ``launch`` (DDP over NCCL on GPUs, gloo on the
CPU), run in a thread while this process draws the live view from rank 0's ``metrics.json``.

Each launched process starts in ``_distributed_main`` (``d2nb.train.launch._distributed_main``,
importable so that spawn finds it) with the ``CheckedSettings`` as json: it builds the same
config from them without checking them again, and trains one rank.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, replace
from pathlib import Path

from d2nb.data import SyntheticSpec
from d2nb.train.config import build_config
from d2nb.train.monitor import LiveView, TrainingCurves, follow_metrics_file, run_title
from d2nb.train.result import RESULT_FILE, TrainResult, read_result
from d2nb.train.settings import CheckedSettings
from d2nb.train.trainer import train_in_process


def launch_processes(cfg, settings: CheckedSettings, processes: int) -> TrainResult:
    """Run detectron2's ``launch`` in a thread; meanwhile draw rank 0's metrics.json here."""
    from detectron2.engine import launch

    metrics_file = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    position = os.path.getsize(metrics_file) if settings.resume and os.path.exists(metrics_file) else 0
    if not settings.resume and os.path.exists(metrics_file):
        os.remove(metrics_file)  # a fresh run starts a fresh metrics file, as the live view reads it
    Path(cfg.OUTPUT_DIR, RESULT_FILE).unlink(missing_ok=True)  # rank 0 writes a fresh one
    payload = json.dumps(asdict(settings))
    failure = []

    def run():
        try:
            launch(_distributed_main, processes, num_machines=settings.num_machines,
                   machine_rank=settings.machine_rank, dist_url=settings.dist_url, args=(payload,))
        except BaseException as error:  # re-raised in the notebook's thread below
            failure.append(error)

    thread = threading.Thread(target=run, name="d2nb-launch", daemon=True)
    thread.start()
    curves = TrainingCurves(cfg.SOLVER.MAX_ITER, run_title(cfg))
    view = LiveView(settings.monitor)
    while thread.is_alive():
        thread.join(timeout=1.0)
        position = follow_metrics_file(metrics_file, curves, view, position)
    if settings.monitor and curves.rows:
        Path(cfg.OUTPUT_DIR, "training_curves.png").write_bytes(curves.png())
    if failure:
        raise failure[0]
    return read_result(cfg.OUTPUT_DIR)


def _allow_cpu_ddp() -> None:
    """detectron2's create_ddp_model always passes ``device_ids=[local_rank]``, which DDP
    refuses for a CPU model; over gloo on the CPU the model must be wrapped without them."""
    import detectron2.engine.defaults as defaults
    from detectron2.engine.defaults import create_ddp_model

    defaults.create_ddp_model = lambda model, **kwargs: create_ddp_model(model, device_ids=None, **kwargs)


def _distributed_main(payload: str) -> None:
    """Entry point of each launched process (importable, so that spawn can find it)."""
    import torch
    from detectron2.utils import comm

    values = json.loads(payload)
    values["synthetic"] = SyntheticSpec(**values["synthetic"])
    # checked in the launching process; the notebook's process draws the live view from metrics.json
    settings = replace(CheckedSettings(**values), monitor=False)
    if not settings.gpus:  # CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
        _allow_cpu_ddp()
    cfg = build_config(settings)
    train_in_process(cfg, settings, [], rank=comm.get_rank())  # rank 0 writes d2nb_result.json
