"""The live training monitor: loss terms, lr, s/iter, ETA and memory, redrawn in place.

Two parts, in the style of detectron2's hooks and writers:

- ``TrainingCurves`` holds metric rows (the shape of ``metrics.json`` lines) and draws them;
  it knows nothing of notebooks and is what tests and ``04_evaluate`` can reuse.
- ``LiveMonitor`` is a detectron2 hook that feeds ``TrainingCurves`` from the trainer's
  ``EventStorage`` and shows it through two IPython display handles updated in place: a
  one-line status a few times a second, and the plot as often as its drawing cost allows
  within ``max_overhead`` of the training time (1% by default).

For multi-process training, whose workers cannot draw into the notebook, the notebook's
own process follows ``metrics.json`` with ``follow_metrics_file`` and draws the same view.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
from detectron2.engine import HookBase

from d2nb.train.validation import PREFIX as VALIDATION  # noqa: E402

SMOOTHING_WINDOW = 20  # iterations, as detectron2's CommonMetricPrinter smooths


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Colab, papermill), False in a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def format_seconds(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


class TrainingCurves:
    """Metric rows of one run and the figure and status line drawn from them."""

    def __init__(self, max_iter: int, title: str = "", validation_terms: bool = False):
        self.max_iter = max_iter
        self.title = title
        self.validation_terms = validation_terms  # each validation loss term too, not only the total
        self.rows = []

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def series(self, key: str):
        points = [(r["iteration"], r[key]) for r in self.rows if key in r]
        return np.array(points, dtype=float).reshape(-1, 2)

    def loss_keys(self) -> list:
        keys = {k for r in self.rows for k in r if k.startswith("loss") or k == "total_loss"}
        return sorted(keys, key=lambda k: (k != "total_loss", k))

    def validation_keys(self) -> list:
        """``validation/total_loss`` (and, with ``validation_terms``, each term) when logged."""
        keys = {k for r in self.rows for k in r if k.startswith(VALIDATION)}
        if not self.validation_terms:
            keys &= {VALIDATION + "total_loss"}
        return sorted(keys, key=lambda k: (k != VALIDATION + "total_loss", k))

    def status(self) -> dict:
        """The latest iteration, smoothed total loss, lr, s/iter, ETA (s) and max memory (MB)."""
        if not self.rows:
            return {}
        last = self.rows[-1]
        recent = self.rows[-SMOOTHING_WINDOW:]
        times = [r["time"] for r in recent if "time" in r]
        losses = [r["total_loss"] for r in recent if "total_loss" in r]
        seconds_per_iter = float(np.median(times)) if times else None
        remaining = self.max_iter - last["iteration"] - 1
        return {
            "iteration": last["iteration"],
            "total_loss": float(np.median(losses)) if losses else None,
            "lr": last.get("lr"),
            "seconds_per_iter": seconds_per_iter,
            "eta_seconds": last.get("eta_seconds", seconds_per_iter * remaining if times else None),
            "max_mem_mb": next((r["max_mem_mb"] for r in reversed(recent) if r.get("max_mem_mb")), None),
        }

    def status_text(self) -> str:
        s = self.status()
        if not s:
            return "waiting for the first iteration..."
        parts = [f"iter {s['iteration'] + 1}/{self.max_iter}"]
        if s["total_loss"] is not None:
            parts.append(f"total_loss {s['total_loss']:.3f}")
        validation = self.series(VALIDATION + "total_loss")
        if len(validation):
            parts.append(f"val {validation[-1, 1]:.3f}")
        if s["lr"] is not None:
            parts.append(f"lr {s['lr']:.2g}")
        if s["seconds_per_iter"] is not None:
            parts.append(f"{s['seconds_per_iter']:.3f} s/iter")
        parts.append(f"ETA {format_seconds(s['eta_seconds'])}")
        if s["max_mem_mb"] is not None:
            parts.append(f"max_mem {s['max_mem_mb']:.0f} MB")
        return "  |  ".join(parts)

    def figure(self):
        """A matplotlib Figure (no pyplot, so nothing is shown twice): losses and lr."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.4), dpi=80, layout="constrained")
        loss_ax, lr_ax = fig.subplots(1, 2, width_ratios=[3, 1])
        for key in self.loss_keys():
            points = self.series(key)
            if len(points):
                loss_ax.plot(points[:, 0], _rolling_median(points[:, 1]), label=key,
                             linewidth=2.2 if key == "total_loss" else 1.1)
        for key in self.validation_keys():  # few points, each already a mean over pictures: not smoothed
            points = self.series(key)
            loss_ax.plot(points[:, 0], points[:, 1], "o--", markersize=3.5, label=key.replace(VALIDATION, "val "),
                         color="black" if key == VALIDATION + "total_loss" else None,
                         linewidth=1.8 if key == VALIDATION + "total_loss" else 1.0)
        loss_ax.set(xlabel="iteration", ylabel="loss (training: median of 20)", xlim=(0, self.max_iter))
        loss_ax.grid(alpha=0.3)
        if self.loss_keys() or self.validation_keys():
            loss_ax.legend(fontsize=8, loc="upper right", ncol=2)
        lr = self.series("lr")
        if len(lr):
            lr_ax.plot(lr[:, 0], lr[:, 1], color="tab:purple")
        lr_ax.set(xlabel="iteration", ylabel="learning rate", xlim=(0, self.max_iter))
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        lr_ax.grid(alpha=0.3)
        fig.suptitle((self.title + "\n" if self.title else "") + self.status_text(), fontsize=10)
        return fig

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        return buffer.getvalue()


def _rolling_median(values: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    if len(values) < 3:
        return values
    out = np.empty_like(values)
    for i in range(len(values)):
        out[i] = np.median(values[max(0, i - window + 1): i + 1])
    return out


class LiveView:
    """Two in-place outputs of a notebook cell: a status line and a plot. No-op elsewhere."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and in_notebook()
        self._status = self._plot = None

    def show_status(self, text: str) -> None:
        if not self.enabled:
            return
        from IPython.display import HTML, display

        html = HTML(f"<pre style='margin:0'>{text}</pre>")
        if self._status is None:
            self._status = display(html, display_id=True)
        else:
            self._status.update(html)

    def show_png(self, png: bytes) -> None:
        if not self.enabled:
            return
        from IPython.display import Image, display

        if self._plot is None:
            self._plot = display(Image(data=png, format="png"), display_id=True)
        else:
            self._plot.update(Image(data=png, format="png"))


class LiveMonitor(HookBase):
    """A hook that shows ``TrainingCurves`` live and saves the final figure as a PNG.

    ``max_overhead`` bounds the time spent drawing as a fraction of the time trained: after
    each plot, the next one waits until drawing cost / elapsed time is within that budget.
    ``overhead`` reports the measured fraction when training ends.
    """

    def __init__(self, output_png=None, live: bool = True, title: str = "",
                 status_interval: float = 0.5, max_overhead: float = 0.01):
        self.output_png = output_png
        self.view = LiveView(live)
        self.title = title
        self.status_interval = status_interval
        self.max_overhead = max_overhead
        self.overhead = 0.0
        self.plots_drawn = 0
        self.status_updates = 0

    def before_train(self):
        self.curves = TrainingCurves(self.trainer.max_iter, self.title)
        self._started = time.perf_counter()
        self._spent = 0.0
        self._last_status = self._last_plot = self._started
        self._plot_cost = 0.05

    def after_step(self):
        begin = time.perf_counter()
        row = _row_from_storage(self.trainer.storage, self.trainer.iter)
        self.curves.add(row)
        if begin - self._last_status >= self.status_interval:
            row["max_mem_mb"] = _max_memory_mb()
            self.view.show_status(self.curves.status_text())
            self._last_status = begin
            self.status_updates += 1
        elapsed = begin - self._started
        first = self.plots_drawn == 0 and elapsed >= self.status_interval  # show a plot early
        if self.view.enabled and (first or begin - self._last_plot >= self._plot_cost / self.max_overhead):
            self._draw()
            self._plot_cost = time.perf_counter() - begin
            self._last_plot = time.perf_counter()
        self._spent += time.perf_counter() - begin
        self.overhead = self._spent / max(elapsed, 1e-9)

    def after_train(self):
        if not getattr(self, "curves", None) or not self.curves.rows:
            return
        self.view.show_status(self.curves.status_text())
        png = self._draw()
        if self.output_png:
            with open(self.output_png, "wb") as f:
                f.write(png)

    def _draw(self) -> bytes:
        png = self.curves.png()
        self.view.show_png(png)
        self.plots_drawn += 1
        return png


def _row_from_storage(storage, iteration: int) -> dict:
    row = {"iteration": iteration}
    for key, (value, at) in storage.latest().items():
        if at == iteration and (key.startswith(("loss", VALIDATION)) or key in ("total_loss", "lr", "time")):
            row[key] = float(value)
    return row


def _max_memory_mb():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def follow_metrics_file(path, curves: TrainingCurves, view: LiveView, position: int = 0) -> int:
    """Add the rows appended to ``metrics.json`` since ``position``; redraw; return the new position."""
    try:
        with open(path) as f:
            f.seek(position)
            text = f.read()
    except FileNotFoundError:
        return position
    complete = text[: text.rfind("\n") + 1]  # a line still being written waits for next time
    for line in complete.splitlines():
        row = json.loads(line)
        if "iteration" in row and ("total_loss" in row or "lr" in row or VALIDATION + "total_loss" in row):
            row.setdefault("max_mem_mb", row.get("memory"))
            curves.add(row)
    if complete:
        view.show_status(curves.status_text())
        view.show_png(curves.png())
    return position + len(complete)


def run_title(cfg) -> str:
    """The plot's title: the run's folder, its dataset and its batch."""
    from pathlib import Path

    return f"{Path(cfg.OUTPUT_DIR).name}: {cfg.DATASETS.TRAIN[0]}, {cfg.SOLVER.IMS_PER_BATCH} images/batch"
