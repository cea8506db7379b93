"""Frozen reference models (the old model, the independently trained new model): loaded, frozen, eval, no_grad.

An image reference embeds the (augmented) image batch; a text reference (an independent text tower) embeds the
captions, tokenised once with its own tokenizer (:meth:`FrozenReference.tokenize`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..data.transforms import ModelInputTransform
from ..modeling_bt2 import BT2Model
from ..utils.io import final_location

logger = logging.getLogger(__name__)


class FrozenReference:
    """A frozen :class:`~bt2_hf.BT2Model` (image or text) that embeds training batches for targets and prototypes.

    The model is put in eval mode with ``requires_grad=False`` and is only ever called under ``torch.no_grad()``; it is
    never given to ``accelerator.prepare`` (no DDP wrapper, no optimizer), so its weights stay bit-identical.

    Args:
        name (`str`): the role: ``"old"``, ``"independent"``, ``"image"``, ``"independent_image"`` …
        model (:class:`~bt2_hf.BT2Model`): the loaded model.
        name_or_path (`str`): where it came from (recorded in the new checkpoint).
        revision (`str`, *optional*): its Hub revision.
        channels_last (`bool`, *optional*, defaults to `False`): feed it channels-last inputs.
    """

    def __init__(
        self, name: str, model: BT2Model, name_or_path: str, revision: str | None = None, channels_last: bool = False
    ):
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.name_or_path = name_or_path
        self.revision = revision
        self.tokens: dict[str, torch.Tensor] | None = None
        self.transform = (
            ModelInputTransform.from_processor(model.processor, channels_last=channels_last)
            if model.modality == "image"
            else None
        )

    @property
    def modality(self) -> str:
        return self.model.modality

    @classmethod
    def load(
        cls,
        name: str,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> FrozenReference:
        """Load a saved bt2_hf model (directory or Hub id; its fingerprint is verified) as a frozen reference."""
        name_or_path = str(name_or_path)
        looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
        if looks_local and not (Path(name_or_path).expanduser() / "config.json").is_file():
            raise FileNotFoundError(
                f"The {name} model {name_or_path} is not a saved bt2_hf model (no config.json there). Train it first "
                f"(see the recipe README) or pass --{name}_model with the right directory."
            )
        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        try:
            model = BT2Model.from_pretrained(name_or_path, **kwargs)
        except OSError as error:
            raise OSError(f"Cannot load the {name} model {name_or_path!r}: {error}") from error
        if device is not None:
            model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        return cls(name, model, name_or_path, revision, channels_last)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embedding_dim)`` (float32, unit norm) of float [0, 1] image batches."""
        if self.model.training:  # a caller switched it: references always embed in eval mode
            self.model.eval()
        pixel_values = self.transform(images.to(self.device))
        return self.model(pixel_values=pixel_values).embeddings.float()

    def tokenize(self, texts: list[str], max_length: int) -> None:
        """Tokenise every training caption once with this (text) reference's own tokenizer."""
        from ..data.image_text import tokenize_texts

        self.tokens = tokenize_texts(self.model.processor, texts, max_length)

    @torch.no_grad()
    def embed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embedding_dim)`` (float32, unit norm) of the captions at data rows ``rows`` (text)."""
        if self.tokens is None:
            raise RuntimeError(f"The text reference {self.name} was not given the captions (tokenize) first.")
        if self.model.training:
            self.model.eval()
        inputs = {k: v[rows.cpu()].to(self.device) for k, v in self.tokens.items()}
        return self.model(**inputs).embeddings.float()

    def metadata(self) -> dict[str, Any]:
        """What the trained model records about this reference."""
        return {
            # where the reference will live: a run inside a staging folder must not record the staging path
            "name_or_path": final_location(self.name_or_path),
            "revision": self.revision,
            "fingerprint": self.model.config.fingerprint,
            "embedding_dim": self.embedding_dim,
            "training": {k: self.model.config.training.get(k) for k in ("method", "class_subset", "dataset")},
        }
