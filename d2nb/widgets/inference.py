"""Widgets of the inference notebook: the model-zoo picker, the threshold explorer, uploads
and the browser camera. Each is a thin view: it holds ipywidgets, observes their values and
calls ``d2nb.zoo``, ``d2nb.images``, ``d2nb.predict`` and ``d2nb.draw``.

    picker = ModelPicker(config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    explorer = ThresholdExplorer(predictions, score_threshold=0.5)
    uploads = UploadPanel(predictor.predict, explorer)

Under papermill they render statically; tests set ``.value`` and read the results.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import ipywidgets as widgets

from d2nb import zoo
from d2nb.draw import class_colour, draw_predictions, encode_jpeg
from d2nb.errors import D2nbError
from d2nb.images import image_from_data_url, load_uploads
from d2nb.predict import DEFAULT_SCORE_THRESHOLD, SCORE_FLOOR

_SHOWN_NUMBERS = [("box_ap", "box AP"), ("mask_ap", "mask AP"), ("keypoint_ap", "kp AP"), ("pq", "PQ"),
                  ("inference_s_per_image", "s/im"), ("train_s_per_iter", "train s/iter"),
                  ("train_memory_gb", "train GB"), ("model_id", "model id")]


def describe_zoo_model(model: zoo.ZooModel) -> str:
    """One line for the picker: config, task and the published numbers it has."""
    numbers = [f"{label} {model.number(column):g}" if isinstance(model.number(column), float)
               else f"{label} {model.number(column)}" for column, label in _SHOWN_NUMBERS[:5]
               if model.number(column) is not None]
    checkpoint = "" if model.checkpoint_url else "  (no published checkpoint)"
    return f"{model.config}  [{model.task}]  " + " · ".join(numbers) + checkpoint


class ModelPicker(widgets.VBox):
    """The model zoo as a filterable, sortable list, plus training runs found under ``runs/``.

    ``value`` is a ``d2nb.zoo.ModelChoice`` (config path, checkpoint URL or path, class
    names); ``config`` and ``weights`` (the notebook's parameters) choose the first selection.
    """

    def __init__(self, config=None, weights=None, runs_root=zoo.RUNS_DIR, rows: int = 12):
        self._initial = (config, weights)
        start = zoo.resolve_model(config, weights, runs_root)
        self._runs = {str(Path(p)): p for p in zoo.find_training_runs(runs_root)}
        if start.output_dir:
            self._runs.setdefault(str(Path(start.output_dir)), Path(start.output_dir))
        self._start = start
        groups = sorted({m.group for m in zoo.zoo_catalogue()})
        self.search = widgets.Text(description="filter", placeholder="part of a name, e.g. R_101")
        self.task = widgets.Dropdown(options=["all", *zoo.TASKS], description="task")
        self.group = widgets.Dropdown(options=["all", *groups], description="folder")
        self.sort = widgets.Dropdown(options=[label for label, _, _ in zoo.SORT_KEYS], value="name",
                                     description="sort by")
        self.published_only = widgets.Checkbox(description="with a published checkpoint", indent=False)
        self.select = widgets.Select(rows=rows, layout=widgets.Layout(width="100%"))
        self.run_folder = widgets.Text(description="run folder", placeholder="an output_dir of 03_train")
        self.add_run = widgets.Button(description="add run")
        self.details = widgets.HTML()
        for control in (self.search, self.task, self.group, self.sort, self.published_only):
            control.observe(lambda change: self._refresh(), "value")
        self.select.observe(lambda change: self._show_details(), "value")
        self.add_run.on_click(lambda button: self._add_run())
        super().__init__([widgets.HBox([self.search, self.task]), widgets.HBox([self.group, self.sort]),
                          self.published_only, self.select,
                          widgets.HBox([self.run_folder, self.add_run]), self.details])
        self._refresh(select=self._key_of(start))

    def rows(self) -> list:
        """The zoo models shown, filtered and sorted as the controls say."""
        return zoo.find_zoo_models(self.search.value, self.task.value, self.group.value, self.sort.value,
                                   self.published_only.value)

    @property
    def value(self) -> zoo.ModelChoice:
        kind, name = self.select.value
        if (kind, name) == self._key_of(self._start):
            return self._start
        if kind == "run":
            return zoo.run_choice(name)
        return zoo.zoo_choice(name)

    def _key_of(self, choice: zoo.ModelChoice) -> tuple:
        if choice.output_dir:
            return ("run", str(Path(choice.output_dir)))
        return ("zoo", choice.zoo_name) if choice.zoo_name else ("file", choice.config)

    def _refresh(self, select=None) -> None:
        select = select or self.select.value
        options = [(f"training run: {name}", ("run", name)) for name in self._runs]
        if self._key_of(self._start)[0] == "file":
            options.append((f"config file: {self._start.config}", self._key_of(self._start)))
        options += [(describe_zoo_model(m), ("zoo", m.config)) for m in self.rows()]
        self.select.options = options
        keys = [key for _, key in options]
        self.select.value = select if select in keys else (keys[0] if keys else None)
        self._show_details()

    def _add_run(self) -> None:
        folder = self.run_folder.value.strip()
        if not zoo.is_training_run(folder):
            self.details.value = _error_html(f"{folder!r} holds no config.yaml with a checkpoint beside it")
            return
        self._runs[str(Path(folder))] = Path(folder)
        self._refresh(select=("run", str(Path(folder))))

    def _show_details(self) -> None:
        if self.select.value is None:
            self.details.value = "<i>no model matches the filter</i>"
            return
        kind, name = self.select.value
        if kind != "zoo":
            self.details.value = f"<b>{html.escape(name)}</b>"
            return
        model = next(m for m in zoo.zoo_catalogue() if m.config == name)
        cells = "".join(f"<td>{html.escape(label)}: <b>{model.number(column)}</b></td>"
                        for column, label in _SHOWN_NUMBERS if model.number(column) is not None)
        self.details.value = (f"<b>{html.escape(name)}</b> ({model.task})<br><table><tr>{cells}</tr></table>"
                              f"checkpoint: <code>{html.escape(model.checkpoint_url or 'none published')}</code>")


class ThresholdExplorer(widgets.VBox):
    """Predictions drawn at a score threshold, redrawn from the cache as the controls move.

    ``settings`` holds the current threshold, classes and toggles, which ``save_outputs``
    takes as keyword arguments; ``counts`` the kept detections per class of the shown picture.
    ``score_threshold`` may be a ``d2nb.thresholds.Thresholds`` (04's thresholds.json): its
    per-class thresholds stay, and the slider sets the threshold of the other classes.
    """

    def __init__(self, predictions=(), score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 score_floor: float = SCORE_FLOOR):
        self.predictions = []
        self.per_class = score_threshold if getattr(score_threshold, "per_class", None) else None
        base = float(getattr(score_threshold, "score_threshold", score_threshold))
        self.slider = widgets.FloatSlider(value=base, min=min(float(score_floor), base),
                                          max=1.0, step=0.01, description="score ≥", readout_format=".2f")
        self.classes = widgets.SelectMultiple(description="classes", rows=6)
        self.boxes = widgets.Checkbox(value=True, description="boxes", indent=False)
        self.masks = widgets.Checkbox(value=True, description="masks", indent=False)
        self.labels = widgets.Checkbox(value=True, description="labels", indent=False)
        self.picture = widgets.Dropdown(description="picture")
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width="70%"))
        self.counts_html = widgets.HTML()
        self.last_redraw_ms = None
        for control in (self.slider, self.classes, self.boxes, self.masks, self.labels, self.picture):
            control.observe(lambda change: self.redraw(), "value")
        own = widgets.Label(f"per-class thresholds: {self.per_class}" if self.per_class else "")
        super().__init__([widgets.HBox([self.picture, self.slider, own]),
                          widgets.HBox([self.classes, widgets.VBox([self.boxes, self.masks, self.labels])]),
                          widgets.HBox([self.image, self.counts_html])])
        self.add_predictions(predictions)

    def add_predictions(self, predictions, show_first: bool = True) -> None:
        """Add predictions (an upload, a snapshot) and show the first of them."""
        predictions = list(predictions)
        if not predictions:
            self.redraw()
            return
        first = len(self.predictions)
        self.predictions += predictions
        with self.hold_trait_notifications():
            present = {p.labels.class_names[c] for p in self.predictions for c in p.classes}
            names = [n for n in self.predictions[0].labels.class_names if n in present]
            selected = set(self.classes.value) | (set(names) - set(self.classes.options))
            self.classes.options = names
            self.classes.value = [n for n in names if n in selected]
            self.picture.options = [(p.name, i) for i, p in enumerate(self.predictions)]
            if show_first or self.picture.value is None:
                self.picture.value = first
        self.redraw()

    @property
    def current(self):
        return self.predictions[self.picture.value] if self.predictions and self.picture.value is not None else None

    @property
    def settings(self) -> dict:
        every_class = set(self.classes.value) == set(self.classes.options)
        threshold = self.per_class.with_score_threshold(self.slider.value) if self.per_class else self.slider.value
        return {"score_threshold": threshold, "classes": None if every_class else list(self.classes.value),
                "boxes": self.boxes.value, "masks": self.masks.value, "labels": self.labels.value}

    @property
    def counts(self) -> dict:
        if self.current is None:
            return {}
        return self.current.counts(self.settings["score_threshold"], self.settings["classes"])

    @property
    def drawn_count(self) -> int:
        return sum(self.counts.values())

    def redraw(self) -> None:
        prediction = self.current
        if prediction is None:
            self.counts_html.value = "<i>no pictures yet</i>"
            return
        started = time.perf_counter()
        picture = draw_predictions(prediction, **self.settings)
        self.image.value = encode_jpeg(picture)
        self.last_redraw_ms = (time.perf_counter() - started) * 1000
        self.counts_html.value = counts_table(self.counts, prediction.labels.class_names)


def counts_table(counts: dict, class_names: list) -> str:
    """HTML table of kept detections per class, coloured as the drawing colours them."""
    rows = "".join(
        f"<tr><td style='color:rgb{class_colour(class_names.index(name))}'>&#9632;</td>"
        f"<td>{html.escape(name)}</td><td style='text-align:right'><b>{count}</b></td></tr>"
        for name, count in counts.items())
    total = sum(counts.values())
    return f"<table>{rows}<tr><td></td><td><i>kept</i></td><td style='text-align:right'><b>{total}</b></td></tr></table>"


class UploadPanel(widgets.VBox):
    """Pictures uploaded from the browser, several at once: each is loaded, predicted with
    ``predict`` (a function taking ``LoadedImage`` list, such as ``Predictor.predict``) and
    added to ``explorer``; a file that is no picture gets its message here, the others run."""

    def __init__(self, predict, explorer: ThresholdExplorer):
        self.predict = _quiet(predict)
        self.explorer = explorer
        self.upload = widgets.FileUpload(accept="image/*", multiple=True, description="upload pictures")
        self.messages = widgets.HTML()
        self.loaded = []
        self.upload.observe(self._on_upload, "value")
        super().__init__([self.upload, self.messages])

    def _on_upload(self, change) -> None:
        if not change["new"]:
            return  # the reset below
        self.add_files(change["new"])
        # emptied, so that choosing the same file again is a change the widget reports
        self.upload.value = ()

    def add_files(self, files) -> list:
        """Load, predict and show ``files`` (``FileUpload.value`` entries or (name, bytes))."""
        images = load_uploads(files)
        self.loaded += images
        errors = [image.error for image in images if not image.ok]
        good = [image for image in images if image.ok]
        self.messages.value = "".join(_error_html(error) for error in errors) + (
            f"<span>{len(good)} picture(s) added</span>" if good else "")
        if good:
            try:
                self.explorer.add_predictions(self.predict(good))
            except Exception as error:  # an observer's exception would only reach the browser's log
                self.messages.value += _error_html(prediction_failure(error, len(good)))
        return images


def prediction_failure(error: Exception, count: int) -> str:
    """The message shown in place of pictures whose prediction failed; the widgets keep working."""
    if isinstance(error, D2nbError):
        return str(error)
    from d2nb.faults import is_out_of_memory

    if is_out_of_memory(error):
        return str(D2nbError(f"the GPU ran out of memory predicting {count} picture(s)",
                             "upload fewer pictures at a time, or make the Predictor with device='cpu'"))
    return str(D2nbError(f"predicting {count} picture(s) failed: {type(error).__name__}: {error}",
                         "upload them again; to see the full traceback, run predictor.predict(load_uploads(...)) "
                         "in a cell"))


def _quiet(predict):
    """``Predictor.predict`` without its progress bar (a bar drawn from an observer lands in
    whichever output area is active), or any function taking a list of ``LoadedImage``."""
    if hasattr(predict, "predict"):
        return lambda images: predict.predict(images, progress=False)
    return predict


def _error_html(message: str) -> str:
    return f"<div style='color:#b00020;white-space:pre-wrap'>&#9888; {html.escape(message)}</div>"


_CAMERA_JS = """
export function render({ model, el }) {
  const video = document.createElement("video");
  video.autoplay = true; video.playsInline = true; video.style.maxWidth = "480px";
  const button = document.createElement("button");
  button.textContent = "start camera";
  const message = document.createElement("div");
  let stream = null;
  button.onclick = async () => {
    try {
      if (!stream) {
        stream = await navigator.mediaDevices.getUserMedia({ video: true });
        video.srcObject = stream; button.textContent = "take snapshot"; return;
      }
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth; canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      model.set("data_url", canvas.toDataURL("image/jpeg", 0.92));
      model.save_changes();
    } catch (error) { message.textContent = "camera: " + error; }
  };
  el.append(video, button, message);
}
"""


def camera_snapshot(predict, explorer: ThresholdExplorer):
    """A browser-camera snapshot widget (JupyterLab, Notebook 7, Colab, VS Code): each
    snapshot is predicted and added to ``explorer``. Needs the ``anywidget`` package;
    without it, returns a note saying so (the rest of the notebook still runs)."""
    try:
        import anywidget
        import traitlets
    except ImportError:
        return widgets.HTML(_error_html(str(D2nbError(
            "the browser camera needs the anywidget package", "pip install anywidget, then restart the kernel"))))

    class CameraSnapshot(anywidget.AnyWidget):
        _esm = _CAMERA_JS
        data_url = traitlets.Unicode("").tag(sync=True)

    camera = CameraSnapshot()
    messages = widgets.HTML()
    predict = _quiet(predict)

    def on_snapshot(change):
        image = image_from_data_url(change["new"], f"snapshot_{len(explorer.predictions) + 1}.jpg")
        if not image.ok:
            messages.value = _error_html(image.error)
            return
        messages.value = ""
        try:
            explorer.add_predictions(predict([image]))
        except Exception as error:  # shown here: an observer's exception only reaches the browser's log
            messages.value = _error_html(prediction_failure(error, 1))

    camera.observe(on_snapshot, "data_url")
    box = widgets.VBox([camera, messages])
    box.camera = camera
    return box


def show_saved(saved: dict, columns: int = 4, limit: int = 16) -> None:
    """Display the pictures ``save_outputs`` wrote as one sheet (a plain PNG output, which
    papermill keeps in the executed notebook), and where they are."""
    import cv2
    from IPython.display import Image, display

    from d2nb.draw import montage

    paths = saved["images"][:limit]
    pictures = [cv2.imread(path)[:, :, ::-1] for path in paths]
    if pictures:
        display(Image(data=cv2.imencode(".png", montage(pictures, columns)[:, :, ::-1])[1].tobytes()))
    more = f" (first {limit} shown)" if len(saved["images"]) > limit else ""
    print(f"{len(saved['images'])} pictures{more} in {Path(saved['images'][0]).parent if paths else '-'}; "
          f"predictions: {saved['json']}")
