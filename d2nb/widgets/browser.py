"""The dataset browser of the dataset-preparation notebook: step through a COCO dataset's
images with their boxes, masks and labels, filter by class, see the class histogram.

    browser = DatasetBrowser("train.json")      # or a registered name such as "bccd_train"
    browser.classes.value = (2,)                # only images holding category id 2
    browser.index.value = 5                     # the sixth of those

A thin view over ``d2nb.data.view.AnnotatedImages`` (drawing) and ``d2nb.data.stats``
(plots): tests set the controls' ``.value`` and read ``position``, ``caption.value`` and
``image.value``, no browser needed.
"""

from __future__ import annotations

import html
import io

import ipywidgets as widgets

from d2nb.data.stats import class_histogram, plot_dataset_stats
from d2nb.data.view import MAX_SIDE, AnnotatedImages
from d2nb.draw import encode_jpeg


class DatasetBrowser(widgets.VBox):
    """Prev/next buttons and a slider over the images (of the chosen classes), the drawn
    image with a caption, toggles for masks, boxes and labels, and the dataset's plots."""

    def __init__(self, source, image_root=None, max_side: int = MAX_SIDE, show_stats: bool = True):
        self.data = AnnotatedImages(source, image_root)
        self.max_side = max_side
        self.picture = None  # the RGB array last shown
        self._shown = self.data.positions()
        counts = {row["category_id"]: row["instances"] for row in class_histogram(self.data.coco)}
        self.classes = widgets.SelectMultiple(
            options=[(f"{name} ({counts.get(cid, 0)})", cid) for cid, name in self.data.class_names.items()],
            rows=min(6, max(2, len(self.data.class_names))), description="classes",
            description_tooltip="show only images holding these classes (none selected: all images)")
        self.previous_button = widgets.Button(description="◀ prev", layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))
        self.index = widgets.IntSlider(min=0, max=max(len(self._shown) - 1, 0), description="image",
                                       continuous_update=False)
        self.masks = widgets.Checkbox(value=True, description="masks", indent=False)
        self.boxes = widgets.Checkbox(value=True, description="boxes", indent=False)
        self.labels = widgets.Checkbox(value=True, description="labels", indent=False)
        self.image = widgets.Image(format="jpeg")
        self.caption = widgets.HTML()
        self.stats = widgets.Image(format="png")
        self.previous_button.on_click(lambda button: self.step(-1))
        self.next_button.on_click(lambda button: self.step(+1))
        self.index.observe(lambda change: self.show(), "value")
        self.classes.observe(lambda change: self._filter(), "value")
        for toggle in (self.masks, self.boxes, self.labels):
            toggle.observe(lambda change: self.show(), "value")
        children = [widgets.HBox([self.previous_button, self.index, self.next_button]),
                    widgets.HBox([self.classes, widgets.VBox([self.masks, self.boxes, self.labels])]),
                    self.caption, self.image]
        if show_stats:
            self.stats.value = _figure_png(plot_dataset_stats(self.data.coco))
            children.append(self.stats)
        super().__init__(children)
        self.show()

    @property
    def shown_positions(self) -> list:
        """Positions (in the json's image list) of the images the slider steps through."""
        return list(self._shown)

    @property
    def position(self):
        """Position of the image shown, or None when no image matches the class filter."""
        return self._shown[self.index.value] if self._shown else None

    @property
    def current_image(self):
        """The COCO image entry shown (a dict), or None."""
        return None if self.position is None else self.data.images[self.position]

    def step(self, offset: int):
        """Show the next (+1) or previous (-1) image, wrapping around at the ends."""
        if self._shown:
            self.index.value = (self.index.value + offset) % len(self._shown)

    def show(self):
        selected = list(self.classes.value)
        if self.position is None:
            names = ", ".join(self.data.class_names[c] for c in selected)
            self.caption.value = f"<i>no image holds {html.escape(names)}</i>"
            self.image.value, self.picture = b"", None
            return
        self.picture = self.data.draw(self.position, selected, self.masks.value, self.boxes.value,
                                      self.labels.value, self.max_side)
        self.image.value = encode_jpeg(self.picture)
        self.caption.value = (f"<b>{self.index.value + 1} / {len(self._shown)}</b> — "
                              f"{html.escape(self.data.caption(self.position, selected))}")

    def _filter(self):
        self._shown = self.data.positions(self.classes.value)
        with self.index.hold_trait_notifications():
            self.index.value = 0
            self.index.max = max(len(self._shown) - 1, 0)
        self.index.disabled = len(self._shown) <= 1
        self.show()


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
