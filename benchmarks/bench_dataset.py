"""Dataset preparation speed: validate a COCO-val-sized file and cut a subset from it.

Generates a COCO instances json of 5,000 images and 36,000 annotations (polygons of 8-24
points, boxes, COCO val2017's proportions) with one small real PNG per image, a few of
each defect injected, then times in a fresh process (so the memory peak is only theirs):

- ``validate_coco`` reading every image header, and with ``check_images=False``;
- ``make_subset`` of 100 images.

Target: validate (with images) + subset in at most 5 s and 1 GiB peak memory (the
process's maximum resident set size) on the project's 2-core CPU machine.

    python benchmarks/bench_dataset.py                 # 5000 images, 36000 annotations
    python benchmarks/bench_dataset.py --images 500 --annotations 3600
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_SECONDS = 5.0
TARGET_PEAK_BYTES = 1 << 30
SIZES = ((480, 640), (640, 480), (427, 640), (640, 427))  # (height, width), COCO's common ones


def make_dataset(folder: Path, num_images: int, num_annotations: int, seed: int = 0) -> Path:
    """Write images/ and instances.json under ``folder``; return the json path."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pictures = {size: cv2.imencode(".png", np.full((*size, 3), 127, np.uint8))[1].tobytes() for size in SIZES}
    images = []
    for index in range(num_images):
        height, width = SIZES[index % len(SIZES)]
        file_name = f"{index:012d}.png"
        (folder / "images" / file_name).write_bytes(pictures[(height, width)])
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
    owners = np.sort(rng.integers(0, num_images, num_annotations))
    annotations = []
    for index, owner in enumerate(owners):
        height, width = SIZES[owner % len(SIZES)]
        points = int(rng.integers(8, 25))
        centre = rng.uniform([20, 20], [width - 20, height - 20])
        radius = rng.uniform(5, 20, points)
        theta = np.sort(rng.uniform(0, 2 * np.pi, points))
        polygon = np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], 1)
        x0, y0 = polygon.min(0)
        x1, y1 = polygon.max(0)
        annotations.append({"id": index + 1, "image_id": int(owner) + 1, "category_id": int(rng.integers(1, 81)),
                            "segmentation": [polygon.round(2).ravel().tolist()],
                            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2),
                                     round(float(y1 - y0), 2)],
                            "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    _inject_defects(folder, images, annotations)
    coco = {"info": {"description": "d2nb benchmark"}, "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": f"class{i}", "supercategory": "thing"} for i in range(1, 82)]}
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def _inject_defects(folder: Path, images: list, annotations: list):
    """Ten of each kind of defect, so the report has something to count."""
    for k in range(10):
        (folder / "images" / images[k]["file_name"]).unlink()                      # missing_image
        images[20 + k]["height"] += 1                                               # size_mismatch
        annotations[100 + k]["bbox"][0] = -15.0                                     # box_outside_image
        annotations[200 + k]["bbox"][2] = 0                                         # empty_box
        annotations[300 + k]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]               # polygon_too_short
        annotations[400 + k]["category_id"] = 999                                   # unknown_category
        annotations[500 + k]["id"] = annotations[0]["id"]                           # duplicate_annotation_id


def measure(json_file: Path) -> dict:
    """Run in a fresh process: validate with and without images, then a 100-image subset."""
    from d2nb.data.subset import make_subset
    from d2nb.data.validate import validate_coco

    timings = {}
    started = time.perf_counter()
    report = validate_coco(json_file, json_file.parent / "images")
    timings["validate_s"] = time.perf_counter() - started
    subset_started = time.perf_counter()
    make_subset(json_file, json_file.with_name("subset_100.json"), 100, "random", seed=0)
    timings["subset_s"] = time.perf_counter() - subset_started
    timings["validate_plus_subset_s"] = time.perf_counter() - started
    started = time.perf_counter()
    validate_coco(json_file, check_images=False)
    timings["validate_no_images_s"] = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {**timings, "peak_rss_bytes": peak_kib * 1024, "counts": {k: v for k, v in report.counts.items() if v},
            "num_images": report.num_images, "num_annotations": report.num_annotations}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--annotations", type=int, default=36000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's json path
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0
    with tempfile.TemporaryDirectory(prefix="d2nb-bench-dataset-") as folder:
        started = time.perf_counter()
        json_file = make_dataset(Path(folder), args.images, args.annotations)
        print(f"generated {args.images} images, {args.annotations} annotations "
              f"({json_file.stat().st_size / 1e6:.1f} MB json) in {time.perf_counter() - started:.1f} s")
        child = subprocess.run([sys.executable, __file__, "--measure", str(json_file)],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
    peak_mib = result["peak_rss_bytes"] / 2**20
    print(f"validate (image headers read): {result['validate_s']:.2f} s")
    print(f"validate (check_images=False): {result['validate_no_images_s']:.2f} s")
    print(f"subset of 100 images:          {result['subset_s']:.2f} s")
    print(f"validate + subset:             {result['validate_plus_subset_s']:.2f} s "
          f"(target <= {TARGET_SECONDS:g} s)")
    print(f"peak memory (max RSS, whole process incl. Python and numpy): {peak_mib:.0f} MiB "
          f"(target <= {TARGET_PEAK_BYTES / 2**20:.0f} MiB)")
    print(f"issues found: {result['counts']}")
    within = result["validate_plus_subset_s"] <= TARGET_SECONDS and result["peak_rss_bytes"] <= TARGET_PEAK_BYTES
    print("within target" if within else "OVER TARGET")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
