"""Step time of CPU-recipe variants, measured side by side in one process.

Each variant (a name and its config ``--opts``) gets its own trainer on the synthetic data; after
a warm-up, the variants take turns running blocks of steps, so a machine whose speed drifts (two
cores shared with other work: the same step measured 0.154-0.21 s across hours) slows all of them
alike. Prints each variant's block times, median s/step and ratio to the first variant. Step time
only: AP needs whole runs (``cpu_recipe.py``).

    python benchmarks/cpu_step_ab.py '{"recipe": [], "roi48": ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "48"]}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", help='JSON object: {"name": ["KEY", "VALUE", ...], ...}; the first is the reference')
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=12, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args(argv)
    from detectron2.utils.events import EventStorage

    from d2nb.train import Trainer, TrainSettings, build_config

    variants = json.loads(args.variants)
    trainers = {name: Trainer(build_config(TrainSettings(
        gpus=0, output_dir=f"/tmp/d2nb-cpu-step-ab/{name}", max_iter=10**6, monitor=False,
        checkpoint_period=10**9, opts=["DATASETS.TEST", "()", *opts]))) for name, opts in variants.items()}
    done = dict.fromkeys(trainers, 0)

    def run(name: str, steps: int) -> float:
        trainer = trainers[name]._trainer
        started = time.perf_counter()
        for _ in range(steps):
            trainer.iter = storage.iter = done[name]
            trainer.run_step()
            done[name] += 1
        return (time.perf_counter() - started) / steps

    times = {name: [] for name in trainers}
    with EventStorage(0) as storage:
        for name in trainers:
            trainers[name]._trainer.storage = storage
            run(name, args.warmup)
        for _ in range(args.rounds):
            for name in trainers:
                times[name].append(run(name, args.block))
    reference = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>16}: {median:.4f} s/step  x{median / reference:.3f}  (blocks: {[round(v, 3) for v in values]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
