"""One cache of what frozen models compute on a training set: a frozen text backbone's pooled output per caption and
a frozen reference's embedding table of the (augmented) training images.

A frozen network gives the same output for the same input, so the stages of one process that share it (the demo's
BCT and BT² against the same old model, several text-tower runs over the same captions) compute it once. An entry is
keyed by everything its values depend on: the weights (fingerprint), the inputs (a content hash), how they were
augmented and batched, the precision and the device; a miss only costs the computation. The cache is bounded (LRU):
a long-lived process keeps the few newest entries.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import torch


class FeatureCache:
    """A bounded least-recently-used map from a key to a computed tensor.

    Args:
        capacity (`int`): how many entries are kept; the least recently used is dropped first.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}.")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()

    def get_or_compute(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor stored under ``key``, or ``compute()``'s result, stored under it.

        Callers must not modify the returned tensor in place: it is shared with later runs.
        """
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = compute()
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value


# The process's cache, shared by every training run in it (a few caption sets or image tables at most).
FROZEN_FEATURES = FeatureCache(capacity=4)


def content_hash(tensors: Iterable[torch.Tensor | None]) -> str:
    """sha256 of the tensors' shapes, dtypes and bytes (``None`` entries count as absent), in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
