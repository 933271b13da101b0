"""The threshold explorer of the evaluation notebook: move the score threshold, read precision,
recall, F1, TP/FP/FN, the confusion matrix and each class's point on its precision-recall curve.

    explorer = ThresholdMetricsExplorer(result)       # an EvaluationResult or its output_dir
    explorer.score_threshold.value = 0.7              # everything below redraws from cached matches
    explorer.metrics.overall["f1"], explorer.confusion.matrix
    explorer.choice.value = BEST_F1; explorer.save.click()   # output_dir/thresholds.json

A thin view over ``d2nb.thresholds.ThresholdTable``: the matching runs once when the explorer
is built; a slider move only reads counts at the new threshold (no model, no COCOeval). The
table, the matrix and the curves are HTML and SVG written here, so a redraw takes
milliseconds even on thousands of images.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np

from d2nb import analysis
from d2nb.thresholds import ThresholdTable, choose_thresholds, write_thresholds

ALL_CLASSES = "all classes"
ONE_THRESHOLD = "this threshold for every class"
BEST_F1 = "best F1 per class"
CURVE_POINTS = 200  # points per drawn precision-recall curve
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


class ThresholdMetricsExplorer(widgets.VBox):
    """A score slider and a class filter over one evaluation, and a button that writes the
    chosen (or best-F1 per class) thresholds to the evaluation's ``thresholds.json``."""

    def __init__(self, result, score_threshold: float = 0.5, class_filter=None, task: str | None = None,
                 output_dir=None):
        if isinstance(result, ThresholdTable):
            self.table = result
        else:
            from d2nb.evaluate import EvaluationResult, load_evaluation

            result = result if isinstance(result, EvaluationResult) else load_evaluation(result)
            task = task or ("segm" if "segm" in result.metrics else "bbox")
            self.table = ThresholdTable.from_evaluation(result, task)
            output_dir = output_dir or result.output_dir
        self.output_dir = output_dir
        names = self.table.class_names
        self.score_threshold = widgets.FloatSlider(value=float(score_threshold), min=0.0, max=1.0, step=0.01,
                                                   description="score >=", readout_format=".2f")
        self.class_filter = widgets.Dropdown(options=[ALL_CLASSES, *names],
                                             value=class_filter if class_filter in names else ALL_CLASSES,
                                             description="class")
        self.metrics_view = widgets.HTML()
        self.confusion_view = widgets.HTML()
        self.curves_view = widgets.HTML()
        self.choice = widgets.ToggleButtons(options=[ONE_THRESHOLD, BEST_F1], value=ONE_THRESHOLD)
        self.save = widgets.Button(description="write thresholds.json", icon="save",
                                   disabled=self.output_dir is None)
        self.saved = widgets.Label()
        self.metrics = None
        self.confusion = None
        for control in (self.score_threshold, self.class_filter):
            control.observe(lambda change: self.redraw(), "value")
        self.save.on_click(lambda button: self.write())
        super().__init__([widgets.HBox([self.score_threshold, self.class_filter]), self.metrics_view,
                          widgets.HBox([self.curves_view, self.confusion_view]),
                          widgets.HBox([self.choice, self.save, self.saved])])
        self.redraw()

    @property
    def class_index(self) -> int | None:
        value = self.class_filter.value
        return None if value == ALL_CLASSES else self.table.class_names.index(value)

    def redraw(self) -> None:
        t = self.score_threshold.value
        self.metrics = self.table.at(t)
        self.confusion = self.table.confusion(t)
        self.metrics_view.value = metrics_html(self.metrics, self.class_index)
        self.confusion_view.value = confusion_html(self.confusion, self.class_index)
        self.curves_view.value = curves_svg(self.table, self.metrics, self.class_index)

    def write(self, choice: str | None = None):
        """Write ``thresholds.json``: ``choice`` ``"score_threshold"`` or ``"best_f1"``, or
        ``None`` for what the toggle shows (what the button does)."""
        choice = choice or ("best_f1" if self.choice.value == BEST_F1 else "score_threshold")
        path = write_thresholds(self.output_dir, self.table,
                                *choose_thresholds(self.table, choice, self.score_threshold.value))
        self.saved.value = f"written: {path}"
        return path

    def summary(self) -> str:
        """The overall numbers at the slider's threshold and each class's best-F1 threshold,
        as text (what a headless run's output shows)."""
        overall = self.metrics.overall
        best = ", ".join(f"{name} {t:.2f}" for name, t in self.table.best_f1_thresholds().items())
        return (f"score >= {self.score_threshold.value:.2f}: precision {overall['precision']:.3f}, "
                f"recall {overall['recall']:.3f}, F1 {overall['f1']:.3f} "
                f"(TP {overall['true_positives']}, FP {overall['false_positives']}, "
                f"FN {overall['false_negatives']})\nbest-F1 threshold per class: {best}")


def metrics_html(metrics, class_index: int | None = None) -> str:
    """Precision, recall, F1 and counts per class (or the one class) and overall."""
    rows = metrics.rows()
    if class_index is not None:
        rows = [rows[class_index]]
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "TP", "FP", "FN"))
    body = "".join(
        f"<tr><td>{html.escape(str(r['class']))}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
        f"<td>{r['f1']:.3f}</td><td>{r['true_positives']}</td><td>{r['false_positives']}</td>"
        f"<td>{r['false_negatives']}</td></tr>" for r in rows)
    return (f"<table style='border-collapse:collapse;text-align:right'><tr>{head}</tr>{body}</table>"
            f"<div>score >= {metrics.score_threshold:.2f}, matched at IoU {analysis.IOU_THRESHOLD:.2f}</div>")


def confusion_html(confusion, class_index: int | None = None) -> str:
    """The confusion matrix as a shaded table; the filtered class's row and column outlined."""
    matrix, labels = confusion.matrix, confusion.labels
    peak = max(int(matrix.max()), 1)
    cells = []
    for row, label in enumerate(labels):
        tds = []
        for column, count in enumerate(matrix[row]):
            shade = int(235 - 180 * count / peak)
            colour = "white" if count > peak / 2 else "black"
            outline = ";outline:2px solid #d62728" if class_index in (row, column) else ""
            tds.append(f"<td style='background:rgb({shade},{shade + 10 if shade < 245 else 255},255);"
                       f"color:{colour};padding:2px 6px;text-align:right{outline}'>{count}</td>")
        cells.append(f"<tr><th style='text-align:right'>{html.escape(label)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    return (f"<div><b>confusion</b> (rows: ground truth, columns: predicted)</div>"
            f"<table style='border-collapse:collapse'><tr><th></th>{head}</tr>{''.join(cells)}</table>")


def curves_svg(table: ThresholdTable, metrics, class_index: int | None = None, size: int = 260) -> str:
    """Each class's precision-recall curve with a dot where the threshold puts it."""
    margin, span = 30, size - 40
    classes = range(len(table.class_names)) if class_index is None else [class_index]
    parts = [f"<svg width='{size + 110}' height='{size}' xmlns='http://www.w3.org/2000/svg' "
             f"style='font:10px sans-serif'>",
             f"<rect x='{margin}' y='10' width='{span}' height='{span}' fill='none' stroke='#999'/>",
             f"<text x='{margin + span / 2}' y='{size - 4}' text-anchor='middle'>recall</text>",
             f"<text x='10' y='{10 + span / 2}' transform='rotate(-90 10 {10 + span / 2})' "
             f"text-anchor='middle'>precision</text>"]

    def xy(recall, precision):
        return margin + recall * span, 10 + (1 - precision) * span

    for n, c in enumerate(classes):
        colour = PALETTE[c % len(PALETTE)]
        recall, precision, _ = table.curve(c)
        if len(recall) > CURVE_POINTS:
            keep = np.unique(np.linspace(0, len(recall) - 1, CURVE_POINTS).astype(int))
            recall, precision = recall[keep], precision[keep]
        points = " ".join("%.1f,%.1f" % xy(r, p) for r, p in zip(recall, precision))
        parts.append(f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        x, y = xy(float(metrics.recall[c]), float(metrics.precision[c]))
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{colour}' stroke='black'/>")
        parts.append(f"<text x='{margin + span + 8}' y='{20 + 12 * n}' fill='{colour}'>"
                     f"{html.escape(table.class_names[c])}</text>")
    parts.append("</svg>")
    return "".join(parts)
