"""``embed_dataset``: embed any image or text dataset with a model into resumable, process-independent shards.

Under ``accelerate launch`` / ``torchrun`` every process embeds the shards ``s`` with ``s % world_size == rank``
(its own files), so 2 processes write exactly the files 1 process writes. A rerun after a crash (even ``kill -9``)
keeps every finished shard and embeds only the missing ones: no item is embedded into two files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fingerprint import fingerprint_model
from ..utils.io import atomic_write_json
from .shards import (
    MANIFEST_NAME,
    PLAN_NAME,
    SHARD_FORMAT,
    EmbeddingDirectory,
    EmbeddingDirectoryError,
    shard_complete,
    write_manifest,
    write_shard,
)
from .sources import GallerySource, open_source

logger = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


def model_identity(model) -> dict:
    """Fingerprint, name, width, compatible prefix and lineage of a model, as recorded in gallery manifests."""
    config = model.config
    fingerprint = getattr(config, "fingerprint", None) or fingerprint_model(model)
    return {
        "fingerprint": fingerprint,
        "name_or_path": getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None),
        "embedding_dim": int(config.embedding_dim),
        "compatible_dim": int(getattr(config, "compatible_dim", None) or config.embedding_dim),
        "modality": getattr(model, "modality", "image"),
        # The encoder's own lineage: cross-modal and sideways queries are admitted through it (admit_to_gallery).
        "compatible_with": [dict(entry) for entry in getattr(config, "compatible_with", None) or []],
    }


def _process_state():
    try:
        from accelerate import PartialState
    except ModuleNotFoundError:  # accelerate is an extra: one process then
        return None
    # accelerate starts a gloo process group on CPU only when told cpu=True (torchrun on a machine without GPUs).
    cpu_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return PartialState(cpu=cpu_distributed)


def encode_items(model, items, batch_size: int, device=None) -> np.ndarray:
    """Embed one range of a source (uint8 tensor batch, PIL list or strings) as float32 rows."""
    if isinstance(items, torch.Tensor) and items.dtype == torch.uint8 and hasattr(model.processor, "image_size"):
        return _encode_uint8_batch(model, items, batch_size, device)
    key = "texts" if model.modality == "text" else "images"
    return model.encode(**{key: items}, batch_size=batch_size, device=device).numpy()


@torch.no_grad()
def _encode_uint8_batch(model, images: torch.Tensor, batch_size: int, device=None) -> np.ndarray:
    # The processor's maths on a whole uint8 batch at once (scale, channels, resize, normalise) instead of image by
    # image: the same pixel values, without a Python loop per image in front of the model.
    from ..data.transforms import ModelInputTransform

    if device is not None:
        model.to(device)
    transform = ModelInputTransform.from_processor(model.processor)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixel_values = transform(images[start : start + batch_size].to(model.device))
        chunks.append(model(pixel_values=pixel_values).embeddings.float().cpu())
    return torch.cat(chunks).numpy()


def embed_dataset(
    model,
    data: str | os.PathLike | GallerySource,
    output_dir: str | os.PathLike,
    *,
    split: str | None = None,
    column: str | None = None,
    id_column: str | None = None,
    streaming: bool = False,
    dtype: str = "float16",
    shard_size: int = 4096,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> EmbeddingDirectory:
    """Embed every item of a dataset with ``model`` into shards with ids and a manifest.

    Args:
        model (`BT2Model`): the encoder (image or text tower).
        data (`str`, `os.PathLike` or `GallerySource`): the dataset (see :func:`bt2_hf.galleries.open_source`).
        output_dir (`str` or `os.PathLike`): the embedding directory; an unfinished one is resumed.
        split, column, id_column, streaming: how to read ``data`` (see :func:`~bt2_hf.galleries.open_source`).
        dtype (`str`, *optional*, defaults to `"float16"`): ``"float16"`` (half the disk) or ``"float32"``.
        shard_size (`int`, *optional*, defaults to `4096`): items per shard (the unit of resumption).
        batch_size (`int`, *optional*, defaults to `256`): items per forward pass.
        device (`str` or `torch.device`, *optional*): defaults to the process's accelerate device.
        show_progress (`bool`, *optional*, defaults to `True`): a progress bar on the main process.

    Returns:
        :class:`EmbeddingDirectory`: the finished directory (its ``manifest`` has ``items_per_second``).

    Raises:
        `EmbeddingDirectoryError`: ``output_dir`` holds a run of another model, dataset, dtype or shard size.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be positive.")
    source = open_source(data, split=split, column=column, id_column=id_column, streaming=streaming)
    if source.modality != model.modality:
        raise ValueError(f"The dataset holds {source.modality}s but the model encodes {model.modality}s.")
    state = _process_state()
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    is_main = rank == 0
    device = device or (state.device if state else None)
    output_dir = Path(output_dir)
    count = len(source)
    plan = {
        "format": SHARD_FORMAT,
        "model": model_identity(model),
        "dataset": source.describe(),
        "count": count,
        "dimension": int(model.config.embedding_dim),
        "dtype": dtype,
        "shard_size": int(shard_size),
        "num_shards": (count + shard_size - 1) // shard_size,
    }
    _claim_directory(output_dir, plan, is_main, state)
    mine = [s for s in range(plan["num_shards"]) if s % world == rank]
    todo = [s for s in mine if not shard_complete(output_dir, s, min(shard_size, count - s * shard_size))]
    if len(todo) < len(mine):
        logger.info("Resuming: %d of this process's %d shards are already written.", len(mine) - len(todo), len(mine))
    model.eval()
    started, embedded = time.perf_counter(), 0
    todo_items = sum(min(shard_size, count - s * shard_size) for s in todo)
    with tqdm(total=todo_items, desc="embed", unit="item", disable=not (show_progress and is_main)) as bar:
        for shard in todo:
            start, stop = shard * shard_size, min(count, (shard + 1) * shard_size)
            chunks = []
            for lo in range(start, stop, batch_size):
                hi = min(stop, lo + batch_size)
                chunks.append(encode_items(model, source.items(lo, hi), batch_size, device))
                bar.update(hi - lo)
            write_shard(output_dir, shard, np.concatenate(chunks).astype(DTYPES[dtype]), source.ids(start, stop))
            embedded += stop - start
    elapsed = time.perf_counter() - started
    if state is not None:
        state.wait_for_everyone()
    rate = embedded * world / elapsed if elapsed > 0 and embedded else None
    if is_main:
        if not (output_dir / MANIFEST_NAME).exists() or todo:
            items = _write_item_files(output_dir, source)
            write_manifest(output_dir, plan, {"items_per_second": rate, "num_processes": world, "items": items})
        if rate:
            logger.info("Embedded %d items in %.1f s: %.0f %s/s.", embedded * world, elapsed, rate, source.modality)
    if state is not None:
        state.wait_for_everyone()
    return EmbeddingDirectory(output_dir)


def _write_item_files(output_dir: Path, source: GallerySource) -> dict:
    """Labels and file paths of the items, by position, when the dataset has them: galleries built from this
    directory show them in search results. Read from the dataset's columns, never by decoding an item."""
    from .shards import atomic_save_npy, file_sha256, ids_array

    items: dict = {"labels": None, "label_names": None, "paths": None, "sha256": {}}
    labels = source.labels()
    if labels is not None and len(labels) == len(source):
        atomic_save_npy(output_dir / "labels.npy", np.asarray(labels, dtype=np.int64))
        items.update(labels="labels.npy", label_names=source.label_names())
    paths = source.paths()
    if paths is not None and len(paths) == len(source):
        atomic_save_npy(output_dir / "paths.npy", ids_array(["" if p is None else str(p) for p in paths]))
        items["paths"] = "paths.npy"
    items["sha256"] = {name: file_sha256(output_dir / name) for name in (items["labels"], items["paths"]) if name}
    return items


def _claim_directory(output_dir: Path, plan: dict, is_main: bool, state) -> None:
    """Write ``plan.json`` (main process) or check that the existing one describes the same run."""
    plan_file = output_dir / PLAN_NAME
    if is_main:
        if plan_file.exists():
            _check_same_run(plan_file, plan)
            for stale in output_dir.glob(".shard-*.tmp"):  # left by a killed run; nothing is writing yet
                stale.unlink(missing_ok=True)
        elif output_dir.exists() and any(output_dir.iterdir()):
            raise EmbeddingDirectoryError(
                f"{output_dir} is not empty and holds no {PLAN_NAME}: choose an empty or new output directory."
            )
        else:
            atomic_write_json(plan_file, plan)
    if state is not None:
        state.wait_for_everyone()
    if not is_main:
        _check_same_run(plan_file, plan)


def _check_same_run(plan_file: Path, plan: dict) -> None:
    existing = json.loads(plan_file.read_text())
    for key, describe in (
        (("model", "fingerprint"), "model"),
        (("dataset", "hash"), "dataset"),
        (("dtype",), "dtype"),
        (("shard_size",), "shard size"),
        (("count",), "item count"),
    ):
        old, new = existing, plan
        for part in key:
            old, new = old.get(part) if isinstance(old, dict) else None, new[part]
        if old != new:
            raise EmbeddingDirectoryError(
                f"{plan_file.parent} holds embeddings of another run (its {describe} is {old!r}, this run's is "
                f"{new!r}): resume with the same settings, or choose a new output directory."
            )
