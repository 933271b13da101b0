"""Write benchmarks/RESULTS.md from the JSON files in benchmarks/results/ (one command).

    python benchmarks/report.py
"""

import json
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    lines = ["# Benchmark results", "",
             "Regenerate with `python benchmarks/report.py` after running the benchmarks that write",
             "`benchmarks/results/*.json` (each file names its command below).", ""]
    for path in sorted((HERE / "results").glob("train*.json")):
        data = json.loads(path.read_text())
        device = data["device"]
        lines += [f"## {path.name}", "",
                  f"{device['gpu']}, torch {device['torch']}, detectron2 {device['detectron2']}, {device['date']}; "
                  f"{data['config']}, random init, {data['ims_per_batch']} images/batch, synthetic {data['size']}, "
                  f"{data['iters']} iterations.", "",
                  f"Command: `python benchmarks/bench_train.py --runs {','.join(data['runs'])} --iters {data['iters']} "
                  f"--ims {data['ims_per_batch']} --size {data['size']}`", "",
                  "| run | s/iter | images/s | s/iter vs baseline | images/s vs baseline | loss curve vs baseline |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, run in data["runs"].items():
            ratio = run.get("s_per_iter_ratio_vs_baseline")
            speed = run.get("images_per_second_ratio_vs_baseline")
            diff = run.get("loss_curve_mean_relative_difference")
            lines.append(f"| {name} | {run['seconds_per_iter']:.4f} | {run['images_per_second']:.1f} | "
                         + (f"x{ratio:.3f} | x{speed:.3f} | {100 * diff:.1f}% |" if ratio else "1 | 1 | - |"))
        lines.append("")
    notes = HERE / "results" / "NOTES.md"  # the hand-written reading of the numbers
    text = "\n".join(lines) + "\n" + (notes.read_text() if notes.exists() else "")
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
