"""Training throughput (images/s) per stage: bt2_hf's accelerate loop against a plain fp32 PyTorch loop.

Both loops train the same model on the same synthetic images with the same method (independent, BCT or BT²; the
frozen references are embedded online in both). The plain loop is what a research script does: fp32, a standard
``DataLoader`` over a ``TensorDataset`` with per-sample crop/flip in the workers, host→device copies every step.
bt2_hf's loop uses bf16 autocast on CUDA, channels-last CNNs, fused Adam, the dataset resident on the device with
augmentation there, and optionally ``torch.compile``.

``--demo`` measures the demo's own stages instead: for each new architecture (ViT, CvT), the wall time and images/s
of the independent, BCT and BT² stages as the demo runs them (``run_stage`` on Fashion-MNIST, data and references
included), with the frozen references' targets computed online (before) and precomputed (after), all in one run, and
the BCT / BT² stage time as a multiple of the independent stage's. ``--demo_scale`` shrinks the training split and the
step budget by the same factor, so a stage sees the training split the same number of times as in the demo.

Examples::

    # the demo's stages, before and after, on 2 CPU cores (a quarter of the demo's data and steps)
    python benchmarks/train_throughput.py --demo --demo_scale 0.25

    # GPU (the goal: >= 3x for the BT² stage with ResNet-50 on 32x32)
    python benchmarks/train_throughput.py --backbone resnet50 --image-size 32 --batch-size 256 --steps 50
    # CPU smoke run
    python benchmarks/train_throughput.py --backbone small_cnn --image-size 28 --batch-size 64 --steps 10 \
        --warmup-steps 3 --num-samples 2048
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from bt2_hf import BT2Config, BT2Model
from bt2_hf.methods import get_method
from bt2_hf.training import BT2TrainingArguments, DataArguments, ModelArguments, train

logger = logging.getLogger("train_throughput")


def backbone_spec(name: str, image_size: int, channels: int) -> tuple[str, dict]:
    from transformers import ResNetConfig, ViTConfig

    if name == "resnet50":
        return "hf_vision", {**ResNetConfig(num_channels=channels).to_dict(), "image_size": image_size}
    if name == "resnet_tiny":
        config = ResNetConfig(num_channels=channels, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
        return "hf_vision", {**config.to_dict(), "image_size": image_size}
    if name == "vit_tiny":
        config = ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                           image_size=image_size, patch_size=4 if image_size % 4 == 0 else 7, num_channels=channels)  # fmt: skip
        return "hf_vision", config.to_dict()
    if name == "small_cnn":
        return "small_cnn", {"num_channels": channels, "widths": [16, 32], "image_size": image_size}
    raise ValueError(f"Unknown backbone {name!r}.")


def plain_loop(stage, backbone_type, backbone_config, refs, images, labels, num_classes, args, device) -> float:
    """A plain fp32 PyTorch loop with a standard DataLoader; returns images/s after warm-up."""

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            x = images[i].float() / 255
            x = torch.nn.functional.pad(x, (4, 4, 4, 4))
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            x = x[:, dy : dy + args.image_size, dx : dx + args.image_size]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            return (x - 0.5) / 0.5, labels[i]

    loader = torch.utils.data.DataLoader(
        Augmented(), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    method = get_method(stage, {"extra_dim": 32} if stage == "bt2" else None)
    references = {name: BT2Model.from_pretrained(path).to(device).eval() for name, path in refs.items()}
    dims = {name: ref.config.embedding_dim for name, ref in references.items()}
    overrides = method.build_config_overrides(dims, None if stage != "independent" else 128)
    torch.manual_seed(0)
    model = BT2Model(BT2Config(backbone_type=backbone_type, backbone_config=backbone_config,
                               num_classes=num_classes, **overrides)).to(device).train()  # fmt: skip
    if method.uses_prototypes:
        method.prepare(torch.randn(num_classes, dims["old"], device=device).div(4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step, seen, start = 0, 0, None
    while step < args.warmup_steps + args.steps:
        for x, y in loader:
            if step == args.warmup_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, seen = time.perf_counter(), 0
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                targets = {name: ref(pixel_values=x).embeddings for name, ref in references.items()}
            losses = method.compute_loss(model(pixel_values=x), targets, y)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(y)
            if step >= args.warmup_steps + args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def bt2_hf_loop(stage, backbone_type, backbone_config, refs, images, labels, args, workdir) -> float:
    """bt2_hf's trainer; images/s of the logging windows after the warm-up window."""
    model_args = ModelArguments(backbone_type=backbone_type, backbone_config=backbone_config,
                                old_model=refs.get("old"), independent_model=refs.get("independent"),
                                embedding_dim=128 if stage == "independent" else None)  # fmt: skip
    training_args = BT2TrainingArguments(
        output_dir=str(workdir / f"bt2_hf_{stage}"), method=stage, max_steps=args.warmup_steps + args.steps,
        per_device_train_batch_size=args.batch_size, logging_steps=args.warmup_steps, disable_tqdm=True,
        mixed_precision="bf16" if torch.cuda.is_available() and not args.fp32 else "no",
        torch_compile=args.compile, overwrite_output_dir=True, prototype_augmentation=False,
    )  # fmt: skip
    train(model_args, DataArguments(), training_args, {"extra_dim": 32} if stage == "bt2" else None,
          train_data=(images, labels))  # fmt: skip
    history = json.loads((workdir / f"bt2_hf_{stage}" / "training_log.json").read_text())
    measured = [e["images_per_second"] for e in history[1:]] or [history[-1]["images_per_second"]]
    return sum(measured) / len(measured)


def demo_stages(architectures: list[str], scale: float, data_dir: str | None) -> list[dict]:
    """Wall time of the demo's stages per architecture, online vs precomputed targets; prints a table, returns rows."""
    from dataclasses import replace

    from bt2_hf.experiments.demo import DemoSize, _stage_spec
    from bt2_hf.experiments.demo_data import load_demo_data, split_off
    from bt2_hf.experiments.stages import run_stage

    data = load_demo_data(data_dir)
    if scale < 1.0:
        data = replace(data, train=split_off(data.train, scale, seed=0)[1])
    rows = []
    print(f"threads {torch.get_num_threads()}; {len(data.train)} training images; scale {scale}")
    print(
        f"{'architecture':<12} {'stage':<12} {'targets':<12} {'steps':>6} {'seconds':>8} {'img/s':>8} {'× independent':>14}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for architecture in architectures:
            size = DemoSize(new_architecture=architecture)
            size = replace(
                size, new_steps=max(1, round(size.new_steps * scale)), old_steps=max(1, round(size.old_steps * scale))
            )
            models = work / architecture
            for name in ("old", "independent"):
                run_stage(_stage_spec(name, size, models, "cpu", 0, data), train_data=data.train, reuse=False)
            timed = [("independent", "-")] + [(m, t) for t in ("online", "precomputed") for m in ("bct", "bt2")]
            base = None
            for method, targets in timed:
                trial = size if targets == "-" else replace(size, reference_targets=targets)
                spec = _stage_spec(method, trial, models / f"timed-{targets}", "cpu", 0, data)
                if method != "independent":  # the references live in the first models folder
                    spec = replace(spec, old_model=str(models / "old"), independent_model=str(models / "independent"))
                started = time.perf_counter()
                run_stage(spec, train_data=data.train, reuse=False)
                seconds = time.perf_counter() - started
                base = seconds if method == "independent" else base
                row = {"architecture": architecture, "stage": method, "targets": targets, "steps": size.new_steps,
                       "seconds": round(seconds, 1), "images_per_second": round(size.new_steps * size.batch_size / seconds, 1),
                       "ratio_to_independent": round(seconds / base, 3)}  # fmt: skip
                rows.append(row)
                print(f"{architecture:<12} {method:<12} {targets:<12} {row['steps']:>6} {row['seconds']:>8.1f} "
                      f"{row['images_per_second']:>8.1f} {row['ratio_to_independent']:>13.2f}x", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", action="store_true", help="time the demo's stages (see the module docstring)")
    parser.add_argument("--demo_architectures", nargs="+", default=["vit", "cvt"])
    parser.add_argument("--demo_scale", type=float, default=0.25)
    parser.add_argument("--data_dir", default=None, help="the demo's data (default: Debian's Fashion-MNIST)")
    parser.add_argument("--output", default=None, help="write the --demo rows as JSON here")
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet_tiny", "vit_tiny", "small_cnn"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps per stage")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers of the plain loop")
    parser.add_argument("--stages", default="independent,bct,bt2")
    parser.add_argument("--compile", action="store_true", help="torch.compile in bt2_hf's loop")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast in bt2_hf's loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.demo:
        rows = demo_stages(args.demo_architectures, args.demo_scale, args.data_dir)
        if args.output:
            Path(args.output).write_text(json.dumps(rows, indent=2))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone_type, backbone_config = backbone_spec(args.backbone, args.image_size, args.channels)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_samples, args.channels, args.image_size, args.image_size),
                           generator=generator, dtype=torch.uint8)  # fmt: skip
    labels = torch.arange(args.num_samples) % args.num_classes
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads); backbone {args.backbone} "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} timed steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        refs = {}
        for name in ("old", "independent"):  # random-init references of the same architecture: same cost
            torch.manual_seed(1)
            BT2Model(BT2Config(backbone_type=backbone_type, backbone_config=backbone_config, embedding_dim=128,
                               num_classes=args.num_classes)).save_pretrained(workdir / name)  # fmt: skip
            refs[name] = str(workdir / name)
        print(f"{'stage':<12} {'plain fp32 (img/s)':>20} {'bt2_hf (img/s)':>16} {'ratio':>7}")
        for stage in args.stages.split(","):
            needed = {k: v for k, v in refs.items() if k in get_method(stage).requires}
            plain = plain_loop(stage, backbone_type, backbone_config, needed, images, labels, args.num_classes,
                               args, device)  # fmt: skip
            ours = bt2_hf_loop(stage, backbone_type, backbone_config, needed, images, labels, args, workdir)
            print(f"{stage:<12} {plain:>20.1f} {ours:>16.1f} {ours / plain:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
