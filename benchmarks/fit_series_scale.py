"""The largest ``--max_steps_scale`` (<= 1) at which a series file fits a time budget, from a short probe run.

The probe (``bt2 series FILE --max_steps_scale P``) leaves each training run's ``training_log.json`` with its
measured images/s. Its wall time splits into training (steps × batch / images/s per run) and fixed costs (start-up,
prototypes, saving, evaluation); the full run is predicted as the same fixed costs plus the full schedules at the
probe's speeds, and the scale is what makes that fit the budget.

Example::

    python benchmarks/fit_series_scale.py recipes/fashion_mnist_series/series_gpu.yaml runs/probe \
        --probe-seconds 62 --probe-scale 0.05 --budget-seconds 300
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from bt2_hf.experiments.series import SeriesVersion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series_file")
    parser.add_argument("probe_dir")
    parser.add_argument("--probe-seconds", type=float, required=True, help="Wall time of the probe run.")
    parser.add_argument("--probe-scale", type=float, required=True)
    parser.add_argument("--budget-seconds", type=float, required=True)
    args = parser.parse_args()

    spec = yaml.safe_load(Path(args.series_file).read_text(encoding="utf-8"))
    versions = [SeriesVersion.from_dict(item) for item in spec["versions"]]  # the series' own defaults
    full_train_seconds = probe_train_seconds = 0.0
    for position, version in enumerate(versions):
        runs = [version.name] if position == 0 else [f"{version.name}-independent", version.name]
        images_per_step = version.batch_size
        full_steps = version.max_steps
        probe_steps = max(1, round(full_steps * args.probe_scale))
        for run in runs:
            log = json.loads((Path(args.probe_dir) / run / "training_log.json").read_text(encoding="utf-8"))
            # the last logged window is past compilation and warm-up
            images_per_second = log[-1]["images_per_second"]
            full_train_seconds += full_steps * images_per_step / images_per_second
            probe_train_seconds += probe_steps * images_per_step / images_per_second
    fixed_seconds = max(0.0, args.probe_seconds - probe_train_seconds)
    scale = min(1.0, max(0.01, (args.budget_seconds - 1.5 * fixed_seconds) / full_train_seconds))
    print(
        json.dumps(
            {
                "scale": round(scale, 3),
                "fixed_seconds": round(fixed_seconds, 1),
                "full_train_seconds_at_probe_speed": round(full_train_seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
