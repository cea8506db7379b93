"""A stable identity for a model's weights: sha256 over the state dict's names, dtypes, shapes and bytes.

The digest depends only on the tensors, not on how they are stored (sharding, file names, key order), so a
dtype-preserving re-save keeps it and a single changed weight changes it. It is the identity that galleries and
compatibility metadata refer to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

FINGERPRINT_PREFIX = "sha256:"


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of a state dict, as ``"sha256:<hex>"``.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): tensors by name (e.g. ``model.state_dict()``).
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        if tensor.device.type == "meta":
            raise ValueError(f"Cannot fingerprint {name!r}: it is on the meta device (weights not loaded).")
        tensor = tensor.to("cpu").contiguous()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}\n".encode())
        # bfloat16 has no numpy dtype: hash its raw bytes through a same-width integer view.
        raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        digest.update(raw.numpy().tobytes())
    return FINGERPRINT_PREFIX + digest.hexdigest()


def fingerprint_model(model: torch.nn.Module) -> str:
    """Fingerprint of ``model.state_dict()`` (persistent parameters and buffers)."""
    return fingerprint_state_dict(model.state_dict())


def short_fingerprint(fingerprint: str | None, length: int = 12) -> str:
    """A readable prefix of a fingerprint for messages and tables."""
    if not fingerprint:
        return "<none>"
    return fingerprint.removeprefix(FINGERPRINT_PREFIX)[:length]
