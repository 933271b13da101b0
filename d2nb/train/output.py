"""The run's output folder: Google Drive mounted when it lies there, checked writable before
anything runs, ``log.txt`` set up, and ``class_names.json`` written beside ``config.yaml``.

In Colab, ``output_dir="/content/drive/MyDrive/runs/shapes"`` keeps a run across runtimes:
Drive is mounted (``d2nb.colab``) before anything is read or written there. The datasets stay
on the runtime's local disk (``$DETECTRON2_DATASETS``), where reading pictures is fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

from d2nb import colab, zoo
from d2nb.errors import D2nbError


def mount_drive_for(output_dir) -> None:
    """Mount Google Drive when ``output_dir`` lies under ``/content/drive`` and it is not mounted
    yet; ``D2nbError`` outside Colab, where no Drive can be mounted."""
    if not colab.on_drive(output_dir):
        return
    if not colab.in_colab():
        raise D2nbError(f"output_dir {str(output_dir)!r} is on Google Drive, which can only be mounted in Colab, "
                        "and this kernel is not Colab's", "pass an output_dir on this machine, e.g. output_dir='runs/train'")
    colab.mount_drive()


def prepare_output_dir(output_dir) -> None:
    """Make ``output_dir``; ``D2nbError`` when it is a file or cannot be written into."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise D2nbError(f"output_dir {str(path)!r} is a file, not a folder",
                        "pass a folder path for output_dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".d2nb-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise D2nbError(f"cannot write into output_dir {str(path)!r} ({error.strerror})",
                        "pass an output_dir in a folder you can write to") from None


def write_class_names(cfg) -> None:
    """class_names.json beside config.yaml: inference in a fresh kernel, where the training
    dataset is not registered, still names the classes (``d2nb.zoo.run_class_names``)."""
    from detectron2.data import MetadataCatalog

    names = getattr(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]), "thing_classes", None)
    if names:
        Path(cfg.OUTPUT_DIR, zoo.CLASS_NAMES_FILE).write_text(json.dumps(list(names)))


class _NotebookConsoleFilter(logging.Filter):
    """In a notebook the live monitor replaces the per-20-iteration log lines: show only
    warnings, d2nb's own messages, the evaluation's AP tables and its progress (a line a
    minute at most). log.txt still gets everything."""

    SHOWN = ("Evaluation results for ", "Per-category ", "Start inference on ", "Total inference time")
    PROGRESS = "Inference done "
    PROGRESS_SECONDS = 60

    def __init__(self):
        super().__init__()
        self._progress_at = -float("inf")

    def filter(self, record):
        if record.levelno >= logging.WARNING or record.name.startswith("d2nb"):
            return True
        if not record.name.startswith("detectron2.evaluation"):
            return False
        message = str(record.msg)
        if message.startswith(self.PROGRESS):
            now = time.monotonic()
            if now - self._progress_at < self.PROGRESS_SECONDS:
                return False
            self._progress_at = now
            return True
        return message.startswith(self.SHOWN)


@contextlib.contextmanager
def prints_to_log(quiet: bool):
    """With ``quiet``, what the evaluation prints (pycocotools' "loading annotations...",
    "index created!" and its 12-line AP summaries, which the AP tables repeat) goes to
    log.txt instead of the notebook. The console log handler keeps its own stream."""
    if not quiet:
        yield
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        if printed.getvalue().strip():
            logging.getLogger("d2nb.evaluation.printed").debug(printed.getvalue().rstrip())


def setup_run_logging(output_dir, rank: int = 0, quiet_console: bool = False) -> None:
    """Send detectron2's, fvcore's and d2nb's logs to ``output_dir/log.txt`` and the console.

    Unlike detectron2's ``setup_logger`` (cached per arguments), calling this again for a new
    run replaces the handlers, so a second run in the same kernel does not also write into the
    first run's log.txt or print every line twice.
    """
    from detectron2.utils.logger import _ColorfulFormatter

    file_format = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                                    datefmt="%m/%d %H:%M:%S")
    log_file = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
    for name in ("detectron2", "fvcore", "d2nb"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        log.setLevel(logging.DEBUG)
        log.propagate = False
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(file_format)
        log.addHandler(file_handler)
        if rank == 0:
            console = logging.StreamHandler(sys.stdout)
            console.setLevel(logging.INFO)
            console.setFormatter(_ColorfulFormatter(
                "[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S",
                root_name=name, abbrev_name="d2" if name == "detectron2" else name))
            if quiet_console:
                console.addFilter(_NotebookConsoleFilter())
            log.addHandler(console)
