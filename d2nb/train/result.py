"""What a run returns and leaves in ``d2nb_result.json``: ``TrainResult``, and its metrics as
the notebook prints them (``format_metrics``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

RESULT_FILE = "d2nb_result.json"  # written by rank 0, read by the process that launched it


@dataclass
class TrainResult:
    output_dir: str
    iteration: int
    metrics: dict
    interrupted: bool = False
    monitor_overhead: float | None = None
    train_seconds: float | None = None  # wall-clock of the training loop, evaluation at the end included
    iterations_run: int | None = None
    validation_loss_seconds: float | None = None  # of train_seconds, spent on the validation loss

    @property
    def model_final(self) -> str:
        return os.path.join(self.output_dir, "model_final.pth")


def write_result(result: TrainResult) -> None:
    Path(result.output_dir, RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))


def read_result(output_dir) -> TrainResult:
    return TrainResult(**json.loads(Path(output_dir, RESULT_FILE).read_text()))


def plain_metrics(metrics) -> dict:
    """detectron2's evaluation results (OrderedDicts of numpy floats) as plain json values."""
    return json.loads(json.dumps(metrics, default=float))


def format_metrics(metrics: dict) -> str:
    """One line per task: ``bbox: AP 81.2  AP50 97.0  AP75 90.1`` (nan shown as n/a)."""
    lines = []
    for task, values in metrics.items():
        if isinstance(values, dict):
            shown = [f"{k} {v:.1f}" if v == v else f"{k} n/a" for k, v in values.items()
                     if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
            lines.append(f"{task}: " + "  ".join(shown))
    return "\n".join(lines) or "no evaluation results (no validation dataset?)"
