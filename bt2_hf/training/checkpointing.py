"""Resumable checkpoints owned by one run: written into a staging directory, then swapped in with one atomic rename.

A checkpoint holds only safetensors and JSON: the model's and the optimizer's tensors in ``*.safetensors``, the
scheduler, gradient scaler, RNG states and the trainer's own state in JSON (``training_state.json``,
``rng_state_<process>.json``, ``trainer_state.json``). Nothing in it is unpickled on resume: a checkpoint holding any
other file (a pickle such as accelerate's ``custom_checkpoint_0.pkl``, ``optimizer.bin`` or a ``*.pt``) is refused
before anything is read, naming the file, because unpickling a file from a shared checkpoint runs whatever code it
carries.

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
import random
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BT2InputError
from ..utils.io import atomic_write_bytes, atomic_write_json, file_operation_done, swap_into_place

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
RUN_FILE = "run.json"
MODEL_STATE_FILE = "model.safetensors"
OPTIMIZER_STATE = "optimizer"  # optimizer.safetensors (tensors) + optimizer.json (the rest)
TRAINING_STATE_FILE = "training_state.json"  # scheduler and gradient scaler
# Files a checkpoint may hold: everything else is refused on resume (see `check_no_pickles`).
_CHECKPOINT_FILE = re.compile(r"^[\w.-]+\.(json|safetensors)$")
# Suffixes of files that torch.load / pickle would unpickle, named as such in the refusal.
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".pl", ".tar"}
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


# Settings that may change between a run and its resume without changing what is trained.
RESUMABLE_SETTINGS = frozenset({
    "output_dir", "resume_from_checkpoint", "resume_with_changes", "stop_after_steps", "logging_steps", "log_with",
    "disable_tqdm", "save_steps", "save_total_limit", "overwrite_output_dir", "torch_compile",
})  # fmt: skip


def settings_differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """``"name: recorded X, asked Y"`` for each setting that differs (both dicts of JSON values, by section)."""
    differences = []
    for section in sorted(set(recorded) | set(asked)):
        before, now = recorded.get(section) or {}, asked.get(section) or {}
        for name in sorted(set(before) | set(now)):
            if name in RESUMABLE_SETTINGS or before.get(name) == now.get(name):
                continue
            differences.append(f"{name}: recorded {before.get(name)!r}, asked {now.get(name)!r}")
    return differences


def check_resume_settings(output_dir: str | os.PathLike, settings: dict[str, Any], allow_changes: bool) -> list[str]:
    """Refuse to resume the run that owns ``output_dir`` with other settings than it recorded, unless
    ``allow_changes`` (``--resume_with_changes``); return the differences.

    Raises:
        `ValueError`: naming each differing setting (recorded and asked) and the fix.
    """
    run = read_run(output_dir)
    if run is None or "settings" not in run:
        logger.warning("%s records no settings (written by an older bt2_hf): resuming without comparing them.",
                       output_dir)  # fmt: skip
        return []
    differences = settings_differences(run["settings"], settings)
    if differences and not allow_changes:
        raise ValueError(
            f"Cannot resume the run in {output_dir} with other settings than it was started with: "
            + "; ".join(differences)
            + ". Resume with the recorded settings, start a new run (--overwrite_output_dir or another output_dir), "
            "or pass --resume_with_changes to continue with these (recorded in run.json)."
        )
    return differences


def start_run(
    output_dir: str | os.PathLike,
    overwrite: bool,
    resume: bool,
    settings: dict[str, Any] | None = None,
    changes: list[str] | None = None,
) -> dict[str, Any]:
    """Make ``output_dir`` belong to this run (main process only) and return its record.

    A fresh run into a non-empty directory (allowed by ``overwrite``) first moves the previous contents aside with one
    rename; a resumed run keeps the directory's run (or adopts a directory written before run ids).

    Args:
        settings (`dict`, *optional*): the run's settings (JSON), recorded so that a resume can compare them.
        changes (`list[str]`, *optional*): settings a resume changed (``--resume_with_changes``), recorded.
    """
    output_dir = Path(output_dir).resolve()
    if resume:
        run = read_run(output_dir)
        if run is not None:
            if changes:
                resumed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                run.setdefault("resumed_with_changes", []).append({"at": resumed, "changes": changes})
                atomic_write_json(output_dir / RUN_FILE, run)
            return run
    run = {"run_id": new_run_id(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "replaced": None}
    if settings is not None:
        run["settings"] = settings
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


def _encode_tree(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """``value`` as JSON, with each tensor moved into ``tensors`` (saved as safetensors) and replaced by its key."""
    if isinstance(value, torch.Tensor):
        key = path or "tensor"
        tensors[key] = value.detach().cpu().contiguous().clone()  # clone: shared storage cannot be saved twice
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode_tree(v, tensors, f"{path}.{k}" if path else k) for k, v in value.items()}
        return {"__items__": [[k, _encode_tree(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot save a {type(value).__name__} in a checkpoint (at {path or 'the top'}): JSON or tensors only"
    )


def _decode_tree(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode_tree(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(_decode_tree(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {k: _decode_tree(v, tensors) for k, v in value["__items__"]}
        return {k: _decode_tree(v, tensors) for k, v in value.items()}
    return value


def _save_tree(tree: Any, directory: Path, name: str) -> None:
    """``tree`` (a state dict) as ``name.json`` + ``name.safetensors``: JSON and tensors, never a pickle."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode_tree(tree, tensors, "")
    atomic_write_bytes(directory / f"{name}.safetensors", save(tensors))
    atomic_write_json(directory / f"{name}.json", encoded)


def _load_tree(directory: Path, name: str) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / f"{name}.safetensors"))
    encoded = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    return _decode_tree(encoded, tensors)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # full (gathered) state dicts on the CPU: the same files whatever the process count or sharding (DDP, FSDP)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict[str, Any],
    total_limit: int = 2,
    run_id: str | None = None,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
):
    """Save the model, optimizer, scheduler, gradient scaler, RNG states and ``state`` as
    ``output_dir/checkpoints/checkpoint-<step>``: safetensors and JSON only (nothing that is unpickled on resume).

    Every process writes its RNG state into the same staging directory; the main process writes the rest (the full,
    gathered model and optimizer state) and swaps the directory into place, so a reader sees either no checkpoint or
    a complete one. Beyond ``total_limit``, the oldest checkpoints *of this run* are removed afterwards.

    Returns:
        `Path`: the checkpoint directory.
    """
    from safetensors.torch import save
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    root = Path(output_dir) / CHECKPOINTS_DIR
    final = root / f"checkpoint-{step}"
    staging = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # every process takes part in gathering (FSDP); the main process writes
    model_state = get_model_state_dict(model, options=_state_dict_options())
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_state_dict_options())
    rng_tensors: dict[str, torch.Tensor] = {}
    rng = _encode_tree(_rng_state(), rng_tensors, "")
    atomic_write_bytes(staging / f"rng_state_{accelerator.process_index}.safetensors", save(rng_tensors))
    atomic_write_json(staging / f"rng_state_{accelerator.process_index}.json", rng)
    if accelerator.is_main_process:
        atomic_write_bytes(
            staging / MODEL_STATE_FILE,
            save({k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}),
        )
        _save_tree(optimizer_state, staging, OPTIMIZER_STATE)
        scaler = getattr(accelerator, "scaler", None)
        training = {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
        tensors: dict[str, torch.Tensor] = {}
        encoded = _encode_tree(training, tensors, "")
        if tensors:
            raise TypeError("the scheduler's or scaler's state holds tensors; it cannot be saved as JSON")
        atomic_write_json(staging / TRAINING_STATE_FILE, encoded)
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


def check_no_pickles(path: str | os.PathLike) -> None:
    """Refuse a checkpoint holding any file other than JSON and safetensors, before anything in it is read.

    Raises:
        `BT2InputError`: naming the first such file (a pickle is named as one: loading it would run its code).
    """
    path = Path(path)
    for entry in sorted(path.rglob("*")):
        if entry.is_dir():
            continue
        if not _CHECKPOINT_FILE.match(entry.name):
            with open(entry, "rb") as handle:
                head = handle.read(4)
            # pickle protocol 2+ starts with 0x80; torch.save writes a zip archive around a pickle
            pickled = entry.suffix.lower() in _PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK\x03\x04"
            what = "a pickle (loading it would run any code it carries)" if pickled else "not JSON or safetensors"
            raise BT2InputError(
                f"the checkpoint holds {entry.name}, {what}. bt2_hf checkpoints hold only JSON and safetensors and "
                "nothing is unpickled on resume; remove the file if you trust the rest of the checkpoint, or resume "
                "from a checkpoint written by this version of bt2_hf.",
                entry,
            )


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


def load_checkpoint(
    accelerator,
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
) -> dict[str, Any]:
    """Restore the model, optimizer, scheduler, gradient scaler and RNG states from ``path`` and return the trainer
    state saved with it. The checkpoint is checked first (`check_no_pickles`): nothing in it is unpickled.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    check_no_pickles(path)
    missing = [name for name in (MODEL_STATE_FILE, f"{OPTIMIZER_STATE}.safetensors", TRAINING_STATE_FILE)
               if not (path / name).is_file()]  # fmt: skip
    if missing:
        raise BT2InputError(
            f"the checkpoint has no {', '.join(missing)}; it is incomplete or was written by another version of "
            "bt2_hf. Resume from another checkpoint or train again.",
            path,
        )
    set_model_state_dict(model, load_file(str(path / MODEL_STATE_FILE)), options=_state_dict_options())
    set_optimizer_state_dict(model, optimizer, _load_tree(path, OPTIMIZER_STATE), options=_state_dict_options())
    training = _decode_tree(json.loads((path / TRAINING_STATE_FILE).read_text(encoding="utf-8")), {})
    scheduler.load_state_dict(training["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and training.get("scaler") is not None:
        scaler.load_state_dict(training["scaler"])
    rng_name = f"rng_state_{accelerator.process_index}"
    if (path / f"{rng_name}.json").is_file():
        _set_rng_state(_load_tree(path, rng_name))
    else:
        logger.warning("%s holds no RNG state of process %d; its random state starts afresh.", path,
                       accelerator.process_index)  # fmt: skip
    with open(path / TRAINER_STATE_FILE, encoding="utf-8") as handle:
        return json.load(handle)
