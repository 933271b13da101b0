"""The live monitor's view logic, without a trainer: status line, ETA, drawing budget."""

import time

import numpy as np
import pytest

from d2nb.train.monitor import LiveMonitor, TrainingCurves, follow_metrics_file, format_seconds


def _curves(n=50, seconds=0.5, max_iter=200):
    curves = TrainingCurves(max_iter)
    for i in range(n):
        curves.add({"iteration": i, "total_loss": 2.0 - i * 0.01, "loss_cls": 1.0, "lr": 0.01, "time": seconds,
                    "max_mem_mb": 512.0})
    return curves


def test_status_has_smoothed_loss_lr_speed_eta_and_memory():
    status = _curves().status()
    assert status["iteration"] == 49
    assert status["total_loss"] == pytest.approx(np.median([2.0 - i * 0.01 for i in range(30, 50)]))
    assert status["seconds_per_iter"] == 0.5
    assert status["eta_seconds"] == pytest.approx(0.5 * (200 - 49 - 1))
    text = _curves().status_text()
    for part in ("iter 50/200", "total_loss", "lr 0.01", "0.500 s/iter", "ETA 01:15", "max_mem 512 MB"):
        assert part in text


def test_figure_draws_every_loss_term_and_lr():
    fig = _curves().figure()
    loss_ax, lr_ax = fig.axes
    assert {line.get_label() for line in loss_ax.lines} == {"total_loss", "loss_cls"}
    assert len(lr_ax.lines) == 1
    assert _curves().png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_seconds():
    assert format_seconds(75) == "01:15" and format_seconds(3725) == "1:02:05" and format_seconds(None) == "-"


def test_follow_metrics_file_reads_only_complete_lines(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 19, "total_loss": 1.5, "lr": 0.01}\n{"iteration": 39, "total_lo')
    curves = TrainingCurves(100)
    from d2nb.train.monitor import LiveView

    position = follow_metrics_file(path, curves, LiveView(enabled=False))
    assert [r["iteration"] for r in curves.rows] == [19]
    with open(path, "a") as f:
        f.write('ss": 1.2, "lr": 0.01}\n')
    follow_metrics_file(path, curves, LiveView(enabled=False), position)
    assert [r["iteration"] for r in curves.rows] == [19, 39]


class _FakeTrainer:
    def __init__(self):
        from detectron2.utils.events import EventStorage

        self.max_iter = 10_000
        self.iter = 0
        self.storage = EventStorage(0)


def test_plot_budget_keeps_drawing_cost_near_one_percent(monkeypatch):
    """With drawing made artificially slow (20 ms), the monitor draws rarely enough that it
    spends about 1% of the elapsed time drawing, however fast the steps are."""
    monitor = LiveMonitor(live=True, max_overhead=0.01)
    monitor.view.enabled = True  # pretend to be in a notebook
    monitor.view.show_png = lambda png: None
    monitor.view.show_status = lambda text: None
    monkeypatch.setattr(TrainingCurves, "png", lambda self: (time.sleep(0.02), b"")[1])
    monitor.trainer = _FakeTrainer()
    monitor.before_train()
    begin = time.perf_counter()
    while time.perf_counter() - begin < 3.0:
        monitor.trainer.storage.put_scalar("total_loss", 1.0)
        monitor.trainer.storage.iter = monitor.trainer.iter
        monitor.after_step()
        time.sleep(0.02)  # the training step (real ones take 0.05 s and more)
        monitor.trainer.iter += 1
    assert 1 <= monitor.plots_drawn <= 4  # 20 ms / 1% = one plot every 2 s at most
    assert monitor.overhead < 0.02
