"""How a COCO dataset is made up: instances per class and per image, as numbers and plots.

    class_histogram("train.json")          # Table: category id, name, instances, images
    instances_per_image("train.json")      # numpy array, one count per image
    plot_dataset_stats("train.json")       # matplotlib Figure with both plots
    detectron2_counts("bccd_train")        # images and instances as DatasetCatalog loads them

Each function takes what ``d2nb.data.register.open_coco`` takes: a json path, a loaded
dict, or a registered dataset name.
"""

from __future__ import annotations

import numpy as np

from d2nb.data.register import open_coco
from d2nb.data.table import Table


def class_histogram(source) -> Table:
    """One row per declared category (in declared order): ``category_id``, ``name``,
    ``instances`` (annotations) and ``images`` (images with at least one)."""
    coco = open_coco(source).coco
    instances, images = {}, {}
    for annotation in coco["annotations"]:
        category = annotation.get("category_id")
        instances[category] = instances.get(category, 0) + 1
        images.setdefault(category, set()).add(annotation.get("image_id"))
    rows = [{"category_id": c.get("id"), "name": c.get("name"), "instances": instances.get(c.get("id"), 0),
             "images": len(images.get(c.get("id"), ()))} for c in coco["categories"]]
    return Table(rows, title=f"{len(coco['annotations'])} instances in {len(coco['images'])} images")


def instances_per_image(source, category_ids=None) -> np.ndarray:
    """Annotations per image, in the json's image order (only ``category_ids`` if given)."""
    coco = open_coco(source).coco
    position = {}
    for index, image in enumerate(coco["images"]):
        position.setdefault(image.get("id"), index)
    wanted = None if category_ids is None else set(category_ids)
    positions = [position.get(a.get("image_id"), -1) for a in coco["annotations"]
                 if wanted is None or a.get("category_id") in wanted]
    positions = np.asarray(positions, dtype=np.int64)
    return np.bincount(positions[positions >= 0], minlength=len(coco["images"]))


def detectron2_counts(name: str) -> dict:
    """What training will see of a registered dataset: ``{"images", "instances"}`` as
    detectron2's ``DatasetCatalog`` loads them (after its own filtering of broken polygons)."""
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get(name)
    return {"images": len(records), "instances": sum(len(r.get("annotations", ())) for r in records)}


def plot_class_histogram(source, ax=None):
    """A horizontal bar chart of instances per class; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    rows = class_histogram(source).rows
    ax = ax or plt.figure(figsize=(6, 0.6 + 0.35 * len(rows))).gca()
    labels = [f"{row['name']} ({row['category_id']})" for row in rows]
    counts = [row["instances"] for row in rows]
    bars = ax.barh(labels[::-1], counts[::-1], color="#4c72b0")
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel("instances")
    ax.set_title("instances per class")
    return ax


def plot_instances_per_image(source, ax=None):
    """A histogram of how many instances each image holds; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    counts = instances_per_image(source)
    ax = ax or plt.figure(figsize=(6, 3)).gca()
    top = int(counts.max()) if counts.size else 0
    ax.hist(counts, bins=np.arange(top + 2) - 0.5, color="#dd8452", rwidth=0.9)
    ax.set_xlabel("instances in the image")
    ax.set_ylabel("images")
    ax.set_title(f"instances per image (mean {counts.mean() if counts.size else 0:.1f})")
    return ax


def plot_dataset_stats(source):
    """Both plots side by side; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    dataset = open_coco(source)
    rows = len(dataset.coco["categories"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.6 + 0.35 * rows)))
    plot_class_histogram(dataset.coco, left)
    plot_instances_per_image(dataset.coco, right)
    figure.tight_layout()
    return figure
