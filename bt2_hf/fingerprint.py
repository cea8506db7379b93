"""A stable identity for a model: sha256 over its weights (names, dtypes, shapes, bytes) and its preprocessing.

The weight digest depends only on the tensors, not on how they are stored (sharding, file names, key order), so a
dtype-preserving re-save keeps it and a single changed weight changes it. The preprocessing config (the image
processor's JSON, or the tokenizer's vocabulary and settings) is part of the identity: the same weights behind another
normalisation give other embeddings, so they are another model. This identity is what galleries and compatibility
metadata refer to.

Loading verifies it on the stored tensors, read straight from the safetensors files before any cast
(:func:`fingerprint_safetensors_files`), whatever ``dtype``, ``device_map`` or quantisation the caller asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import BT2InputError

FINGERPRINT_PREFIX = "sha256:"


class FingerprintMismatchError(ValueError):
    """The weights or preprocessing do not hash to the fingerprint recorded in ``config.json`` (or in a gallery)."""


class UnverifiedWeightsError(ValueError):
    """A checkpoint records no fingerprint, so its weights cannot be verified (load with ``trust_unverified_weights``)."""


def _update_with_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach()
    if tensor.device.type == "meta":
        raise ValueError(f"Cannot fingerprint {name!r}: it is on the meta device (weights not loaded).")
    tensor = tensor.to("cpu").contiguous()
    digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
    # bfloat16 has no numpy dtype: hash its raw bytes through a same-width integer view.
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
    digest.update(raw.numpy().tobytes())


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of the weights alone, as ``"sha256:<hex>"``.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): tensors by name (e.g. ``model.state_dict()``).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        _update_with_tensor(digest, name, state_dict[name])
    return FINGERPRINT_PREFIX + digest.hexdigest()


def fingerprint_safetensors_files(paths: Iterable[str | os.PathLike]) -> str:
    """Weight fingerprint of the tensors stored in safetensors files (one checkpoint, possibly sharded).

    The tensors are read as stored, so the result equals :func:`fingerprint_state_dict` of the state dict that was
    saved, whatever dtype the model is later loaded in.

    Raises:
        `BT2InputError`: a file is truncated or not a safetensors file (the message names it), or two shards hold
        the same tensor.
    """
    from safetensors import safe_open

    digest = hashlib.sha256()
    located: dict[str, str] = {}
    for path in map(str, paths):
        try:
            with safe_open(path, framework="pt") as handle:
                names = list(handle.keys())
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise BT2InputError(
                f"cannot read the safetensors weights ({type(error).__name__}: {error}); the file is truncated or "
                "corrupted. Download or save the checkpoint again.",
                path,
            ) from None
        for name in names:
            if name in located:
                raise BT2InputError(f"tensor {name!r} is stored twice (also in {located[name]}).", path)
            located[name] = path
    handles: dict[str, Any] = {}
    try:
        for name in sorted(located):
            path = located[name]
            if path not in handles:
                handles[path] = safe_open(path, framework="pt").__enter__()
            try:
                tensor = handles[path].get_tensor(name)
            except Exception as error:
                raise BT2InputError(
                    f"cannot read tensor {name!r} ({type(error).__name__}: {error}); the file is truncated or "
                    "corrupted. Download or save the checkpoint again.",
                    path,
                ) from None
            _update_with_tensor(digest, name, tensor)
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return FINGERPRINT_PREFIX + digest.hexdigest()


def preprocessing_identity(processor: Any) -> dict[str, Any] | None:
    """What of a processor changes embeddings, as plain JSON data (``None`` for a model without a processor).

    Image processors and the open_clip tokenizer give their saved config (``to_dict()`` / their JSON fields); a
    transformers tokenizer gives its class, a digest of its vocabulary and its special tokens.
    """
    if processor is None:
        return None
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover - transformers is a core dependency
        PreTrainedTokenizerBase = ()  # noqa: N806
    if isinstance(processor, PreTrainedTokenizerBase):
        vocab = json.dumps(sorted(processor.get_vocab().items()), ensure_ascii=False).encode()
        return {
            "processor_class": type(processor).__name__.removesuffix("Fast"),
            "vocab_sha256": hashlib.sha256(vocab).hexdigest(),
            "special_tokens": {k: str(v) for k, v in sorted(processor.special_tokens_map.items())},
            "do_lower_case": getattr(processor, "do_lower_case", None),
        }
    if hasattr(processor, "to_dict"):
        return {"processor_class": type(processor).__name__, **processor.to_dict()}
    fields = {k: v for k, v in vars(processor).items() if not k.startswith("_")}
    return {"processor_class": type(processor).__name__, **fields}


def combine_fingerprint(weights_fingerprint: str, processor: Any, adapter: Mapping[str, Any] | None = None) -> str:
    """The model fingerprint: the weight fingerprint alone when there is neither a processor nor an adapter, else a
    digest of the weights, the preprocessing and the adapter's config.

    Args:
        weights_fingerprint (`str`): of the stored tensors (adapter weights included: they are model weights).
        processor: the model's processor, or ``None``.
        adapter (`dict`, *optional*): a post-hoc adapter's config (``config.adapter["config"]``: kind, widths and
            hyper-parameters): the same weights read as another kind of map would give other embeddings.
    """
    identity = preprocessing_identity(processor)
    if identity is None and adapter is None:
        return weights_fingerprint
    text = f"weights={weights_fingerprint}"
    if identity is not None:
        text += "\npreprocessing=" + json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    if adapter is not None:
        text += "\nadapter=" + json.dumps(dict(adapter), sort_keys=True, separators=(",", ":"), default=str)
    return FINGERPRINT_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def adapter_identity(config: Any) -> dict[str, Any] | None:
    """What of a model's post-hoc adapter the fingerprint covers besides its weights: ``config.adapter["config"]``
    (``None`` for a model without an adapter)."""
    block = getattr(config, "adapter", None)
    return dict(block["config"]) if block else None


def state_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model's in-memory state: ``model.state_dict()``, ``model.processor`` and the adapter's config
    (if any).

    It detects any change to a weight or to the processor; it equals the saved fingerprint only for models whose
    checkpoint stores every tensor under its in-memory name (transformers may rename or fuse some on save).
    """
    return combine_fingerprint(
        fingerprint_state_dict(model.state_dict()),
        getattr(model, "processor", None),
        adapter_identity(getattr(model, "config", None)),
    )


def fingerprint_model(model: torch.nn.Module) -> str:
    """The fingerprint of a model: its verified saved fingerprint when it has one, else its in-memory state's.

    For a :class:`~bt2_hf.BT2Model` loaded by ``from_pretrained`` or written by ``save_pretrained`` and not changed
    since, this is the fingerprint in its ``config.json`` (computed on the stored tensors). Otherwise (a model changed
    in memory, or never saved) it is :func:`state_fingerprint`, which no saved checkpoint or gallery will match
    unless the model is saved.
    """
    verified = model.verified_fingerprint() if hasattr(model, "verified_fingerprint") else None
    return verified or state_fingerprint(model)


def short_fingerprint(fingerprint: str | None, length: int = 12) -> str:
    """A readable prefix of a fingerprint for messages and tables."""
    if not fingerprint:
        return "<none>"
    return fingerprint.removeprefix(FINGERPRINT_PREFIX)[:length]
