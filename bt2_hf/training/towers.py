"""An image–text pair in training: two :class:`~bt2_hf.BT2Model` towers in one module, saved as two checkpoints.

The trainer prepares the pair as one module (one optimizer, one DDP wrapper, one checkpoint state), and the
``modality = "pair"`` methods (:mod:`bt2_hf.methods.pair`) read its :class:`BT2PairOutput`. On disk a pair is the
layout ``<output_dir>/image_tower`` and ``<output_dir>/text_tower`` (each a complete checkpoint: ``from_pretrained``,
galleries and cards work on it as on any model) plus ``<output_dir>/pair.json`` naming the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..modeling_bt2 import BT2Model, BT2Output
from ..utils.io import atomic_write_json

PAIR_FILE = "pair.json"
TOWER_DIRS = {"image": "image_tower", "text": "text_tower"}


@dataclass
class BT2PairOutput(ModelOutput):
    """Outputs of :class:`BT2PairModel`: each tower's :class:`~bt2_hf.BT2Output` for the same rows."""

    image: BT2Output | None = None
    text: BT2Output | None = None


class BT2PairModel(nn.Module):
    """An image tower and a text tower trained together.

    Args:
        image (:class:`~bt2_hf.BT2Model`): the image tower.
        text (:class:`~bt2_hf.BT2Model`): the text tower.
    """

    modality = "pair"

    def __init__(self, image: BT2Model, text: BT2Model):
        super().__init__()
        if image.modality != "image" or text.modality != "text":
            raise ValueError(f"A pair needs an image and a text tower, got {image.modality} and {text.modality}.")
        self.image = image
        self.text = text

    def towers(self) -> dict[str, BT2Model]:
        return {"image": self.image, "text": self.text}

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        text_backbone_output: torch.Tensor | None = None,
    ) -> BT2PairOutput:
        """Embed image–text pairs; ``text_backbone_output`` replaces the text inputs with a frozen text backbone's
        stored pooled features (see :meth:`BT2Model.forward`)."""
        if text_backbone_output is not None:
            text = self.text(backbone_output=text_backbone_output)
        else:
            text = self.text(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return BT2PairOutput(image=self.image(pixel_values=pixel_values), text=text)

    def save_pretrained(
        self, save_directory: str | os.PathLike, is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:  # fmt: skip
        """Save each tower as a checkpoint under ``save_directory`` (``image_tower/``, ``text_tower/``) and
        ``pair.json``. ``state_dict`` (the pair's, e.g. gathered under FSDP) is split between the towers."""
        save_directory = Path(save_directory)
        for tower, model in self.towers().items():
            own = None
            if state_dict is not None:
                own = {k.removeprefix(f"{tower}."): v for k, v in state_dict.items() if k.startswith(f"{tower}.")}
            model.save_pretrained(save_directory / TOWER_DIRS[tower], is_main_process=is_main_process, state_dict=own)
        if is_main_process:
            atomic_write_json(save_directory / PAIR_FILE, {
                "towers": dict(TOWER_DIRS),
                "fingerprints": {tower: model.config.fingerprint for tower, model in self.towers().items()},
                "method": (self.image.config.training or {}).get("method"),
            })  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> BT2PairModel:
        """Load both towers of a saved pair (each verified against its fingerprint)."""
        directory = Path(directory)
        return cls(*(BT2Model.from_pretrained(directory / TOWER_DIRS[t], **kwargs) for t in ("image", "text")))


def is_pair_directory(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a saved pair (``pair.json``)."""
    return (Path(directory) / PAIR_FILE).is_file()
