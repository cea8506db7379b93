"""Deterministic, process-sharded batch loaders with exact mid-epoch resume.

Both loaders draw one permutation per epoch from ``seed + epoch`` and cut it into *global* batches of
``batch_size × num_processes``; process ``r`` takes rows ``[r·batch_size, (r+1)·batch_size)`` of every global batch.
So 1 process with batch 2B and 2 processes with batch B see the same global batches, and resuming at batch ``n`` of an
epoch (the equivalent of accelerate's ``skip_first_batches``) is just starting the iteration there — no batches are
loaded and thrown away.

* :class:`DeviceTensorDataLoader` keeps the whole (small) dataset as one uint8 tensor on the device and slices it: no
  worker processes, no host→device copies per step (Fashion-MNIST and CIFAR fit in a few hundred MB).
* :class:`ShardedDataLoader` wraps a map-style dataset (images decoded on the fly) in a ``torch.utils.data.DataLoader``
  with the same batch order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class _EpochBatches:
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.global_batch_size = self.batch_size * self.num_processes
        if drop_last and self.num_samples < self.global_batch_size:
            raise ValueError(
                f"The dataset has {self.num_samples} samples, fewer than one global batch "
                f"({self.batch_size} per process × {self.num_processes} processes); lower the batch size."
            )

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return -(-self.num_samples // self.global_batch_size)

    def order(self, epoch: int, shuffle: bool | None = None) -> torch.Tensor:
        if not (self.shuffle if shuffle is None else shuffle):
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + int(epoch)))

    def batches(
        self, epoch: int, start_batch: int = 0, shuffle: bool | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(position of this process's rows in the global batch, row indices)`` from ``start_batch`` on.

        ``shuffle`` overrides the sampler's own setting for this pass only (e.g. an ordered no-grad pass).
        """
        order = self.order(epoch, shuffle)
        for step in range(start_batch, len(self)):
            global_rows = order[step * self.global_batch_size : (step + 1) * self.global_batch_size]
            offset = min(self.process_index * self.batch_size, len(global_rows))
            rows = global_rows[offset : offset + self.batch_size]
            if len(rows) == 0:  # a short last batch (drop_last=False) may leave a process nothing
                continue
            yield offset, rows


class DeviceTensorDataLoader:
    """Batches of a dataset held as tensors on ``device``.

    Each batch is a dict: ``images`` (uint8 ``(B, C, H, W)`` on the device), ``labels``, ``index`` (row ids in the
    dataset), ``global_offset`` (position of these rows within the global batch) and ``global_batch_size``.

    Args:
        images (`torch.Tensor` of shape `(N, C, H, W)`): uint8 (or float) images.
        labels (`torch.LongTensor` of shape `(N,)`): class ids.
        batch_size (`int`): samples per process and step.
        device (`torch.device`, *optional*): where the data lives; defaults to the images' device.
        num_processes, process_index (`int`, *optional*): data-parallel world size and rank.
        shuffle (`bool`, *optional*, defaults to `True`): a new permutation every epoch.
        seed (`int`, *optional*, defaults to 0): permutation seed (epoch ``e`` uses ``seed + e``).
        drop_last (`bool`, *optional*, defaults to `True`): drop the incomplete last global batch.

    >>> import torch
    >>> loader = DeviceTensorDataLoader(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10), batch_size=4)
    >>> len(loader), [batch["index"].tolist() for batch in loader.iter_epoch(0, shuffle=False)]
    (2, [[0, 1, 2, 3], [4, 5, 6, 7]])
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device | str | None = None,
        num_processes: int = 1,
        process_index: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.device = device
        self.sampler = _EpochBatches(len(labels), batch_size, num_processes, process_index, shuffle, seed, drop_last)

    def __len__(self) -> int:
        return len(self.sampler)

    def iter_epoch(self, epoch: int, start_batch: int = 0, shuffle: bool | None = None) -> Iterator[dict[str, Any]]:
        """The batches of ``epoch``, starting at batch ``start_batch`` (mid-epoch resume)."""
        for offset, rows in self.sampler.batches(epoch, start_batch, shuffle):
            rows_on_device = rows.to(self.device)
            yield {
                "images": self.images.index_select(0, rows_on_device),
                "labels": self.labels.index_select(0, rows_on_device),
                "index": rows,
                "global_offset": offset,
                "global_batch_size": self.sampler.global_batch_size,
            }


class _RowsDataset(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data.get_image(index), self.data.labels[index], index


class ShardedDataLoader:
    """The batch order of :class:`DeviceTensorDataLoader` over a lazily decoded dataset (DataLoader workers).

    Args:
        data (:class:`~bt2_hf.data.ImageClassificationData`): the split (``data.get_image(i)`` gives uint8 images).
        batch_size, num_processes, process_index, shuffle, seed, drop_last: as for :class:`DeviceTensorDataLoader`.
        num_workers (`int`, *optional*, defaults to 4): decoding worker processes.
        device (`torch.device`, *optional*): batches are moved there (non-blocking, from pinned memory on CUDA).
    """

    def __init__(
        self,
        data,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        num_workers: int = 4,
        device: torch.device | str | None = None,
    ):
        self.dataset = _RowsDataset(data)
        self.sampler = _EpochBatches(len(data), batch_size, num_processes, process_index, shuffle, seed, drop_last)
        self.num_workers = num_workers
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __len__(self) -> int:
        return len(self.sampler)

    def iter_epoch(self, epoch: int, start_batch: int = 0, shuffle: bool | None = None) -> Iterator[dict[str, Any]]:
        planned = list(self.sampler.batches(epoch, start_batch, shuffle))
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[rows.tolist() for _, rows in planned],
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for (offset, _), (images, labels, index) in zip(planned, loader):
            yield {
                "images": images.to(self.device, non_blocking=True),
                "labels": labels.to(self.device, non_blocking=True),
                "index": index,
                "global_offset": offset,
                "global_batch_size": self.sampler.global_batch_size,
            }
