"""Choose the demo's new architecture on the validation split, at equal training time, with a rule fixed beforehand.

The rule (written before any run): every candidate trains the *independent* new model for the same wall-clock time
as the reference ViT's ``--reference_steps`` (each candidate's steps = reference steps × ViT step time / its step
time, both measured in this run), on the validation split carved from the training split (never the test split),
for each seed. The winner is the candidate with the highest mean validation top-1 new → new; a candidate qualifies
only if it beats the old model's old → old top-1 by at least ``--min_headroom`` points on every seed (an upgrade
worth making). Ties (within 0.5 point) go to the faster candidate.

Usage::

    python benchmarks/demo_architecture_search.py --output arch_search.json [--seeds 0 1] [--candidates vit cvt]

Prints a table and writes JSON with every candidate's step time, steps, seconds and metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def _step_seconds(size, data, architecture: str, repeats: int = 12) -> float:
    """Seconds of one training step (forward, cross-entropy, backward, Adam) of the independent model at the demo's
    batch size, in this process. The minimum over ``repeats`` steps: other processes on the cores only ever add time,
    so the minimum is the candidate's own cost, and every candidate is measured the same way."""
    import torch

    from bt2_hf import BT2Config, BT2Model
    from bt2_hf.experiments.demo import _new_backbone_config

    trial = replace(size, new_architecture=architecture)
    config = BT2Config(
        backbone_type="hf_vision",
        backbone_config=_new_backbone_config(trial, data.image_size, data.num_channels),
        embedding_dim=size.embedding_dim,
        num_classes=data.train.num_classes,
        logit_scale=size.logit_scale,
    )
    torch.manual_seed(0)
    model = BT2Model(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=size.learning_rate)
    images = data.train.images[: size.batch_size].float().div(255)
    labels = data.train.labels[: size.batch_size]
    times = []
    for _ in range(repeats + 3):
        started = time.perf_counter()
        loss = model(pixel_values=images, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return min(times[3:])


def main(argv: list[str] | None = None) -> int:
    from bt2_hf.experiments.demo import DemoSize, _prepare_data, _stage_spec
    from bt2_hf.experiments.demo_data import load_demo_data
    from bt2_hf.experiments.embedding import embed_split
    from bt2_hf.experiments.stages import run_stage
    from bt2_hf.retrieval import RetrievalEvaluator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--candidates", nargs="+", default=["vit", "cvt", "mobilevit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--reference_steps", type=int, default=600)
    parser.add_argument("--min_headroom", type=float, default=8.0)
    parser.add_argument("--output", default="arch_search.json")
    parser.add_argument(
        "--seconds_per_step", type=json.loads, default=None,
        help='Step times measured earlier on idle cores, e.g. \'{"vit": 0.06, "cvt": 0.127}\' (skips the calibration).',
    )  # fmt: skip
    args = parser.parse_args(argv)

    size = DemoSize()
    data, evaluated_on = _prepare_data(load_demo_data(args.data_dir), size, validation=True)
    labels = data.test.labels.numpy()
    evaluator = RetrievalEvaluator(metrics=("top1", "map"))
    report: dict = {"rule": __doc__.split("\n\n")[1], "evaluated_on": evaluated_on, "candidates": {}, "old": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seconds_per_step = args.seconds_per_step or {arch: _step_seconds(size, data, arch) for arch in args.candidates}
        reference = seconds_per_step.get("vit", min(seconds_per_step.values()))
        print("seconds per step:", {k: round(v, 4) for k, v in seconds_per_step.items()}, flush=True)
        for seed in args.seeds:
            old_dir = run_stage(_stage_spec("old", size, work / f"old-{seed}", "cpu", seed, data), train_data=data.train,
                                reuse=False)  # fmt: skip
            old = embed_split(old_dir, data.test.images, batch_size=512, device="cpu")
            old_metrics = evaluator.evaluate(old, old, labels, labels, same_items=True).metrics
            report["old"][seed] = {k: round(100 * v, 2) for k, v in old_metrics.items()}
            for arch in args.candidates:
                steps = max(1, int(round(args.reference_steps * reference / seconds_per_step[arch])))
                trial = replace(size, new_architecture=arch, new_steps=steps)
                started = time.perf_counter()
                path = run_stage(_stage_spec("independent", trial, work / f"{arch}-{seed}", "cpu", seed, data),
                                 train_data=data.train, reuse=False)  # fmt: skip
                seconds = time.perf_counter() - started
                new = embed_split(path, data.test.images, batch_size=512, device="cpu")
                metrics = evaluator.evaluate(new, new, labels, labels, same_items=True).metrics
                row = {"steps": steps, "train_seconds": round(seconds, 1),
                       **{k: round(100 * v, 2) for k, v in metrics.items()}}  # fmt: skip
                report["candidates"].setdefault(arch, {"seconds_per_step": round(seconds_per_step[arch], 4)})
                report["candidates"][arch][seed] = row
                print(f"seed {seed} {arch:10s} steps {steps:5d} {seconds:6.1f}s new/new top1 {row['top1']:.2f} "
                      f"mAP {row['map']:.2f} | old/old top1 {report['old'][seed]['top1']:.2f}", flush=True)  # fmt: skip
    qualified = {}
    for arch, rows in report["candidates"].items():
        margins = [rows[s]["top1"] - report["old"][s]["top1"] for s in args.seeds]
        rows["mean_top1"] = round(float(np.mean([rows[s]["top1"] for s in args.seeds])), 2)
        rows["min_headroom"] = round(min(margins), 2)
        if min(margins) >= args.min_headroom:
            qualified[arch] = rows["mean_top1"]
    best = max(qualified.values(), default=None)
    near = [a for a, v in qualified.items() if best is not None and v >= best - 0.5]
    report["chosen"] = min(near, key=lambda a: report["candidates"][a]["seconds_per_step"]) if near else None
    print(f"{'arch':10s} {'s/step':>8s} {'mean top1':>10s} {'min headroom':>13s}")
    for arch, rows in report["candidates"].items():
        print(f"{arch:10s} {rows['seconds_per_step']:8.4f} {rows['mean_top1']:10.2f} {rows['min_headroom']:13.2f}")
    print("chosen:", report["chosen"])
    Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
