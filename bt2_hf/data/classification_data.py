"""The container every image-classification source ends up as: images (or a lazy dataset), labels, class names.

It lives apart from the loaders so that each loader (:mod:`.fashion_mnist`, :mod:`.datasets`) imports it without
importing the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ImageClassificationData:
    """Images and labels of one split.

    Args:
        labels (`torch.LongTensor` of shape `(N,)`): class ids in the dataset's label space.
        images (`torch.ByteTensor` of shape `(N, C, H, W)`, *optional*): the images, in memory.
        dataset (`torch.utils.data.Dataset`, *optional*): instead of ``images``: item ``i`` is a uint8 ``(C, H, W)``
            tensor (large datasets, decoded on the fly by data-loader workers).
        class_names (`list[str]`, *optional*): one name per class id; its length is the number of classes.
        source (`str`, *optional*): where the data came from (recorded in the checkpoint).
        class_subset (`list[int]`, *optional*): the classes kept by :meth:`select_classes`, if any.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    dataset: Any = None
    class_names: list[str] | None = None
    source: str = "in-memory"
    class_subset: list[int] | None = None
    # rows of the source split this subset was taken from (of `dataset` when lazy): galleries record them as item ids
    indices: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.dataset is None):
            raise ValueError("Give exactly one of images= (in-memory tensors) or dataset= (lazy).")
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if self.images is not None:
            if self.images.ndim == 3:
                self.images = self.images.unsqueeze(1)
            if self.images.ndim != 4:
                raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}.")
            if len(self.images) != len(self.labels):
                raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
        if self.class_names is None:
            self.class_names = [str(i) for i in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]
        # Checked here, before any training step or file write: an out-of-range label would otherwise crash the
        # loss half-way through a run.
        bad = torch.nonzero((self.labels < 0) | (self.labels >= len(self.class_names))).flatten()
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"Label {int(self.labels[row])} at row {row} ({len(bad)} such labels) is outside the "
                f"{len(self.class_names)} classes 0-{len(self.class_names) - 1} of {self.source}: fix the labels or "
                "the class names."
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def _take(self, rows: torch.Tensor, **changes: Any) -> ImageClassificationData:
        base = self.indices[rows] if self.indices is not None else rows
        if self.images is not None:
            return ImageClassificationData(
                labels=self.labels[rows], images=self.images[rows], class_names=self.class_names,
                source=self.source, class_subset=changes.get("class_subset", self.class_subset), indices=base,
            )  # fmt: skip
        return ImageClassificationData(
            labels=self.labels[rows], dataset=self.dataset, class_names=self.class_names, source=self.source,
            class_subset=changes.get("class_subset", self.class_subset), indices=base,
        )  # fmt: skip

    def select_classes(self, class_ids: Sequence[int] | None) -> ImageClassificationData:
        """Keep only the samples of ``class_ids`` (labels keep their original ids; the label space is unchanged)."""
        if class_ids is None:
            return self
        bad = [c for c in class_ids if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"Class ids {bad} are outside this dataset's {self.num_classes} classes.")
        keep = torch.isin(self.labels, torch.tensor(list(class_ids), dtype=torch.long))
        return self._take(torch.nonzero(keep).flatten(), class_subset=sorted(class_ids))

    def take_per_class(self, max_samples: int | None, seed: int = 0) -> ImageClassificationData:
        """At most ``max_samples`` samples in all, drawn class-balanced with a fixed seed (small CPU recipes)."""
        if max_samples is None or max_samples >= len(self):
            return self
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        present = torch.unique(self.labels)
        per_class = max(1, max_samples // len(present))
        picked = []
        for label in present.tolist():
            rows = order[self.labels[order] == label][:per_class]
            picked.append(rows)
        rows = torch.sort(torch.cat(picked)).values[:max_samples]
        return self._take(rows)

    def take_each_class(self, per_class: int | None, seed: int = 0) -> ImageClassificationData:
        """At most ``per_class`` samples *of each class* (drawn with a fixed seed, kept in their original order);
        unlike :meth:`take_per_class`, whose number is the total."""
        if per_class is None:
            return self
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}.")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)
        picked = [order[self.labels[order] == label][:per_class] for label in torch.unique(self.labels).tolist()]
        return self._take(torch.sort(torch.cat(picked)).values)

    def get_image(self, index: int) -> torch.Tensor:
        """One uint8 ``(C, H, W)`` image."""
        if self.images is not None:
            return self.images[index]
        row = int(self.indices[index]) if self.indices is not None else index
        return self.dataset[row]
