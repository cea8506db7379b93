"""Resumable checkpoints: ``accelerator.save_state`` into a temporary directory, then one atomic rename."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_json

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, state: dict[str, Any], total_limit: int = 2
):
    """Save model, optimizer, scheduler, RNG states and ``state`` (JSON) as ``output_dir/checkpoints/checkpoint-<step>``.

    Every process writes into the same temporary directory (accelerate stores one RNG file per process); the main
    process then renames it into place, so a reader sees either no checkpoint or a complete one. Older checkpoints
    beyond ``total_limit`` are removed afterwards.

    Returns:
        `Path`: the checkpoint directory.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"checkpoint-{step}"
    staging = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(staging / TRAINER_STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in list_checkpoints(output_dir)[:-total_limit] if total_limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str) -> Path:
    """The checkpoint to resume from: ``"latest"`` (newest under ``output_dir``) or an explicit directory."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but {Path(output_dir) / CHECKPOINTS_DIR} holds no checkpoint; "
                "train without --resume_from_checkpoint first (with --save_steps)."
            )
        return checkpoints[-1]
    path = Path(resume_from_checkpoint)
    if not (path / TRAINER_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a bt2_hf training checkpoint (no {TRAINER_STATE_FILE}).")
    return path


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict[str, Any]:
    """Restore the accelerator state from ``path`` and return the trainer state saved with it."""
    accelerator.load_state(str(path))
    with open(Path(path) / TRAINER_STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)
