"""detectron2 install times through d2nb's wheel cache: the first build, then a cached re-install.

Both installs go into fresh virtual environments made with ``--system-site-packages`` (torch is
this machine's) and ``--without-pip`` (their pip is this machine's: ensurepip's setuptools 65
cannot build wheels), through ``d2nb.install.wheels.install_package``, the code path of
``setup_notebook()`` and ``python -m d2nb.install``. The cache starts empty (a new temporary
folder unless ``--cache-dir`` is given), so the first install is a real compile. ``--source``
is detectron2's source at the pinned commit (default: GitHub, as in Colab).

    python benchmarks/bench_install.py --source /work/d2src --out benchmarks/results/install_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's d2nb

from d2nb.install import DETECTRON2  # noqa: E402
from d2nb.install.wheels import build_target, install_package  # noqa: E402


def fresh_venv(folder: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")


def timed_install(package, cache: Path, venv: Path) -> dict:
    started = time.perf_counter()
    python = fresh_venv(venv)
    installed = install_package(package, cache, python=python)
    wall = time.perf_counter() - started
    imported = subprocess.run([python, "-c", "import detectron2._C as c; print(c.__file__)"], capture_output=True,
                              text=True, cwd=tempfile.gettempdir()).stdout.strip()
    return {"how": installed.how, "wall_seconds": round(wall, 1),
            "build_seconds": installed.build_seconds and round(installed.build_seconds, 1),
            "install_seconds": round(installed.install_seconds, 1), "wheel": str(installed.wheel),
            "wheel_megabytes": round(installed.wheel.stat().st_size / 2**20, 1),
            "imported_from_the_venv": imported.startswith(str(venv)), "detectron2_C": imported}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DETECTRON2.source, help="detectron2 source: a folder or pip requirement")
    parser.add_argument("--cache-dir", default=None, help="wheel cache (default: a new temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/install.json")
    args = parser.parse_args()
    package = replace(DETECTRON2, source=args.source)
    with tempfile.TemporaryDirectory(prefix="d2nb-bench-install-") as scratch:
        scratch = Path(scratch)
        cache = Path(args.cache_dir) if args.cache_dir else scratch / "wheels"
        first = timed_install(package, cache, scratch / "venv-first")
        second = timed_install(package, cache, scratch / "venv-second")
        target = build_target()
    import torch

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "build_target": asdict(target), "date": time.strftime("%Y-%m-%d"),
                    "max_jobs": os.environ.get("MAX_JOBS")},
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "source": args.source, "revision": package.revision, "first": first, "second": second}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
