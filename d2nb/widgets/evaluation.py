"""Widgets of the evaluation notebook: a results viewer over what ``d2nb.evaluate`` wrote.

    viewer = ResultsViewer(result)          # an EvaluationResult, or its output_dir
    viewer.class_filter.value = "circle"    # the error gallery shows circles' errors, worst first
    viewer.next.click()

A thin view: the tables come from ``EvaluationResult``, the chart, the matching and the
gallery from ``d2nb.analysis``. Under papermill it renders statically; tests set ``.value``.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from d2nb import analysis
from d2nb.evaluate import EvaluationResult, load_evaluation

ALL_CLASSES = "all classes"


class ResultsViewer(widgets.VBox):
    """The AP tables and per-category chart of one task, and an error gallery: one image at a
    time, ground truth beside predictions, worst first, filtered by class, with prev/next."""

    def __init__(self, result, score_threshold: float = 0.5):
        self.result = result if isinstance(result, EvaluationResult) else load_evaluation(result)
        tasks = [t for t in self.result.metrics if t in analysis.TASKS] or ["bbox"]
        self._cocoeval = {}
        self.task = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
        self.tables = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.class_filter = widgets.Dropdown(options=[ALL_CLASSES, *self.result.class_names], value=ALL_CLASSES,
                                             description="class")
        self.score_threshold = widgets.FloatSlider(value=score_threshold, min=0.0, max=1.0, step=0.05,
                                                   description="score >=", continuous_update=False)
        self.previous = widgets.Button(description="previous", icon="arrow-left")
        self.next = widgets.Button(description="next", icon="arrow-right")
        self.position = widgets.Label()
        self.gallery = widgets.Image(format="png")
        self.index = 0
        self.images = []
        self.task.observe(lambda change: self._show_task(), "value")
        for control in (self.class_filter, self.score_threshold):
            control.observe(lambda change: self._filter(), "value")
        self.previous.on_click(lambda button: self._step(-1))
        self.next.on_click(lambda button: self._step(+1))
        super().__init__([self.task, self.tables, self.chart,
                          widgets.HBox([self.class_filter, self.score_threshold]),
                          widgets.HBox([self.previous, self.next, self.position]), self.gallery])
        self._show_task()

    @property
    def current(self) -> analysis.ImageMatches | None:
        """The image the gallery shows."""
        return self.images[self.index] if self.images else None

    def _show_task(self) -> None:
        task = self.task.value
        table = self.result.tables.get(task, "")
        notes = [n for n in self.result.notes if n.startswith(task)]
        self.tables.value = (f"<pre>{html.escape(table)}</pre>"
                             + "".join(f"<div>{html.escape(n)}</div>" for n in notes))
        if task in self.result.metrics:
            ap = analysis.per_category_ap(self._evaluation(task))
            self.chart.value = analysis.figure_png(analysis.plot_per_category_ap(ap, f"{task} AP per category"))
        self._filter()

    def _evaluation(self, task):
        if task not in self._cocoeval:
            self._cocoeval[task] = analysis.run_cocoeval(self.result.gt_json, self.result.results_json, task)
        return self._cocoeval[task]

    def _filter(self) -> None:
        overlap = "segm" if self.task.value == "segm" else "bbox"
        matches = analysis.match_detections(self.result.gt_json, self.result.results_json,
                                            score_threshold=self.score_threshold.value, task=overlap)
        class_name = None if self.class_filter.value == ALL_CLASSES else self.class_filter.value
        self.images = analysis.worst_images(matches, self.result.class_names, class_name)
        self.index = 0
        self._show_image()

    def _step(self, delta: int) -> None:
        if self.images:
            self.index = (self.index + delta) % len(self.images)
        self._show_image()

    def _show_image(self) -> None:
        image = self.current
        if image is None:
            self.position.value = "no image with errors for this class at this threshold"
            self.gallery.value = b""
            return
        self.position.value = (f"{self.index + 1}/{len(self.images)}: {image.file_name}, "
                               f"{image.missed()} missed, {image.false_positives()} false positives")
        fig = analysis.plot_error_gallery([image], self.result.image_root, self.result.class_names, count=1)
        self.gallery.value = analysis.figure_png(fig)
