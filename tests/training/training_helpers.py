"""Helpers of the training tests: synthetic data and quick training arguments."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from bt2_hf.training import BT2TrainingArguments

CNN = {"num_channels": 1, "widths": [8, 16], "image_size": 28}
NUM_CLASSES = 4


def synthetic_data(n: int = 96, seed: int = 0, channels: int = 1, size: int = 28):
    """uint8 images whose brightness pattern depends on the class, so a few steps already learn something."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = torch.randint(0, 96, (n, channels, size, size), generator=generator)
    for c in range(NUM_CLASSES):
        images[labels == c, :, c * 6 : c * 6 + 6, :] += 150
    return images.clamp(0, 255).to(torch.uint8), labels


def quick_args(output_dir, method: str, **overrides) -> BT2TrainingArguments:
    values = dict(
        output_dir=str(output_dir),
        method=method,
        per_device_train_batch_size=16,
        max_steps=3,
        logging_steps=1,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    values.update(overrides)
    return BT2TrainingArguments(**values)


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(target: list[str], pythonpath: list[str | Path] = ()) -> None:
    """Run ``target`` (``["-m", module, *args]`` or ``[script, *args]``) under ``torchrun --nproc_per_node 2`` on
    127.0.0.1 (gloo on CPU), one thread per process; fail the test with the workers' stderr if it fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (REPO, *pythonpath)), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *target]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
