"""The backbone contract: an encoder that maps model inputs to pooled features ``(batch, hidden_size)``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class of every encoder a ``BT2Model`` can wrap.

    Subclasses are built **from a config dict only** (no download, no file access in ``__init__``), so that
    ``BT2Model.from_pretrained`` can rebuild them offline before loading the saved weights. Pretrained weights from a
    local directory or file come in through :meth:`load_pretrained_weights`.

    Class attributes (the facts the rest of the library asks a backbone, instead of branching on its name):
        modality (`str`): ``"image"`` or ``"text"``.
        main_input_name (`str`): ``"pixel_values"`` or ``"input_ids"``.
        poolings (`tuple[str, ...]`): the pooling names this backbone accepts; the first is the default.
        sentence_transformers (`bool`): a saved model of this backbone also loads as a sentence-transformers model
            (its processor is a transformers tokenizer or image processor).
        size_agnostic (`bool`): works at any image size; training gives the processor the data's size when the
            backbone config names none.
        default_image_size (`int`): an image backbone's processor size when the backbone config names none.
    """

    modality: ClassVar[str] = "image"
    main_input_name: ClassVar[str] = "pixel_values"
    poolings: ClassVar[tuple[str, ...]] = ("default",)
    sentence_transformers: ClassVar[bool] = True
    size_agnostic: ClassVar[bool] = False
    default_image_size: ClassVar[int] = 224

    @classmethod
    def default_processor(cls, backbone_config: dict[str, Any]) -> Any:
        """The processor a freshly built model uses when none was given, from its (resolved) backbone config.

        Image backbones: a :class:`~bt2_hf.processing.BT2ImageProcessor` at the config's ``image_size`` (else
        ``default_image_size``) and ``num_channels``. Text backbones: ``None`` (a tokenizer needs vocabulary files,
        which the user passes).
        """
        if cls.modality == "text":
            return None
        from ..processing import BT2ImageProcessor

        image_size = backbone_config.get("image_size", cls.default_image_size)
        return BT2ImageProcessor(image_size=image_size, num_channels=int(backbone_config.get("num_channels", 3)))

    @classmethod
    def prefers_channels_last(cls, backbone_config: dict[str, Any]) -> bool:
        """Whether training on a GPU should use the channels-last memory format (convolutional networks)."""
        return False

    def __init__(self, backbone_config: dict[str, Any], pooling: str):
        super().__init__()
        if pooling not in self.poolings:
            raise ValueError(
                f"{type(self).__name__} does not support pooling={pooling!r}; choose one of {list(self.poolings)}."
            )
        self.backbone_config = dict(backbone_config)
        self.pooling = pooling

    # Layer classes FSDP must not split (BT2Model gathers them from its backbone); none by default.
    _no_split_modules: set[str] = set()

    def set_gradient_checkpointing(self, enable: bool, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute activations in the backward pass instead of storing them (``BT2Model.gradient_checkpointing_enable``)."""
        raise ValueError(
            f"Backbone {type(self).__name__} has no layers to checkpoint; gradient checkpointing works with hf_vision, "
            "hf_text and open_clip backbones."
        )

    @property
    def hidden_size(self) -> int:
        """Width of the pooled features."""
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:  # (B, hidden_size)
        raise NotImplementedError

    def restore_computed_buffers(self) -> None:
        """Recompute buffers that are derived from the config and not saved (non-persistent).

        ``from_pretrained`` builds the model on the meta device and fills it from the checkpoint; a non-persistent
        buffer that no ``_init_weights`` rebuilds would be left as uninitialised memory. Backbones with such buffers
        override this; :meth:`BT2Model.from_pretrained` calls it after loading.
        """

    @classmethod
    def config_from_pretrained(cls, name_or_path: str, **hub_kwargs: Any) -> dict[str, Any]:
        """The ``backbone_config`` matching a pretrained checkpoint (used before :meth:`load_pretrained_weights`).

        Args:
            name_or_path (`str`): a Hub repo id or a local checkpoint (what the backbone type accepts).
            hub_kwargs: ``revision``, ``token``, ``cache_dir``, ``local_files_only`` for the Hub cache.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be initialised from a pretrained checkpoint.")

    def load_pretrained_weights(self, name_or_path: str, **hub_kwargs: Any) -> None:
        """Load a pretrained checkpoint's weights (Hub repo id or local path) into this (already built) backbone."""
        raise NotImplementedError(f"{type(self).__name__} cannot be initialised from a pretrained checkpoint.")

    def pretrained_processor(self, name_or_path: str, **hub_kwargs: Any) -> Any:
        """The preprocessing the pretrained checkpoint was trained with (a processor or tokenizer), or ``None``."""
        return None
