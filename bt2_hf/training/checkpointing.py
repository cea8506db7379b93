"""Resumable checkpoints owned by one run: ``accelerator.save_state`` into a staging directory, then one atomic swap.

Every training run into an ``output_dir`` has a run id, recorded in ``output_dir/run.json`` and in each of its
checkpoints. ``--resume_from_checkpoint latest`` means the newest checkpoint *of that run*, and pruning
(``save_total_limit``) only ever removes older checkpoints of the run that is saving. ``--overwrite_output_dir``
first moves the previous contents aside in one rename (``<output_dir>.replaced-<run id>``), so a new run never mixes
its checkpoints with an old run's; the moved-aside folder is removed once the new run has saved its final model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import BT2InputError
from ..utils.io import atomic_write_json, file_operation_done, swap_into_place

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
RUN_FILE = "run.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# What a training run writes into its output_dir: a moved-aside directory holding only these is removed when the new
# run completes; one holding anything else (user files) is kept, beside the new run.
_RUN_OUTPUT = re.compile(
    r"^(run\.json|pair\.json|image_tower|text_tower|config\.json|model.*\.safetensors(\.index\.json)?|preprocessor_config\.json|"
    r"open_clip_tokenizer_config\.json|tokenizer.*\.json|special_tokens_map\.json|vocab\.(txt|json)|merges\.txt|"
    r"training_log\.(json|csv)|README\.md|checkpoints|logs|\..*)$"
)


def new_run_id() -> str:
    """A unique, sortable run id: UTC start time plus random digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def read_run(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run that owns ``output_dir`` (``run.json``), or ``None`` for a directory written before run ids."""
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BT2InputError(
            f"the run record is not valid JSON ({error}); remove it to adopt the directory.", path
        ) from None
    if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
        raise BT2InputError("the run record has no run_id; remove it to adopt the directory.", path)
    return run


def start_run(output_dir: str | os.PathLike, overwrite: bool, resume: bool) -> dict[str, Any]:
    """Make ``output_dir`` belong to this run (main process only) and return its record.

    A fresh run into a non-empty directory (allowed by ``overwrite``) first moves the previous contents aside with one
    rename; a resumed run keeps the directory's run (or adopts a directory written before run ids).
    """
    output_dir = Path(output_dir).resolve()
    if resume:
        run = read_run(output_dir)
        if run is not None:
            return run
    run = {"run_id": new_run_id(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "replaced": None}
    if not resume and overwrite and output_dir.is_dir() and any(output_dir.iterdir()):
        previous = read_run(output_dir) if (output_dir / RUN_FILE).is_file() else None
        label = previous["run_id"] if previous else time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside = output_dir.with_name(f"{output_dir.name}.replaced-{label}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{secrets.token_hex(2)}")
        os.rename(output_dir, aside)  # one atomic step: the old run stays whole, beside the new one
        file_operation_done()
        run["replaced"] = aside.name
        logger.info(
            "Moved the previous contents of %s aside to %s (removed when this run completes).", output_dir, aside
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / RUN_FILE, run)
    return run


def finish_run(output_dir: str | os.PathLike, run: dict[str, Any]) -> None:
    """After the final model is saved: remove the previous run this run moved aside (only training outputs)."""
    if not run.get("replaced"):
        return
    aside = Path(output_dir).resolve().with_name(run["replaced"])
    if not aside.is_dir():
        return
    others = sorted(entry.name for entry in aside.iterdir() if not _RUN_OUTPUT.match(entry.name))
    if others:
        logger.warning(
            "Kept %s, the previous contents of the output directory: it holds files a training run does not write "
            "(%s). Remove it when you no longer need them.",
            aside,
            ", ".join(others[:5]),
        )
        return
    shutil.rmtree(aside, ignore_errors=True)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict[str, Any],
    total_limit: int = 2,
    run_id: str | None = None,
):
    """Save model, optimizer, scheduler, RNG states and ``state`` (JSON) as ``output_dir/checkpoints/checkpoint-<step>``.

    Every process writes into the same staging directory (accelerate stores one RNG file per process); the main
    process then swaps it into place, so a reader sees either no checkpoint or a complete one. Beyond ``total_limit``,
    the oldest checkpoints *of this run* are removed afterwards.

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
        file_operation_done()
        atomic_write_json(staging / TRAINER_STATE_FILE, {**state, "run_id": run_id})
        swap_into_place(staging, final)
        if total_limit > 0:
            for old in list_checkpoints(output_dir, run_id)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                file_operation_done()
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def _checkpoint_run_id(path: Path) -> str | None:
    try:
        return json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def list_checkpoints(output_dir: str | os.PathLike, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first; with ``run_id``, only those of that run."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    paths = [p for _, p in sorted(found)]
    if run_id is not None:
        paths = [p for p in paths if _checkpoint_run_id(p) == run_id]
    return paths


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str, run_id: str | None = None) -> Path:
    """The checkpoint to resume from: ``"latest"`` (this run's newest under ``output_dir``) or an explicit directory.

    Args:
        run_id (`str`, *optional*): the run that owns ``output_dir`` (``run.json``); ``None`` for a directory written
            before run ids, where the newest checkpoint of any run is taken.
    """
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir, run_id)
        if not checkpoints:
            others = len(list_checkpoints(output_dir)) if run_id is not None else 0
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest' but {Path(output_dir) / CHECKPOINTS_DIR} holds no checkpoint of the "
                f"run {run_id or ''} that owns it"
                + (f" ({others} of other runs: pass one explicitly to continue from it)" if others else "")
                + "; train without --resume_from_checkpoint first (with --save_steps)."
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
