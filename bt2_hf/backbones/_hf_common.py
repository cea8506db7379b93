"""Shared plumbing for backbones that wrap a transformers ``PreTrainedModel`` built from its config."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from .base import Backbone


def hf_config_from_dict(backbone_config: dict[str, Any]) -> PreTrainedConfig:
    """Rebuild a transformers config from the dict stored in ``BT2Config.backbone_config``."""
    config = dict(backbone_config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError(
            "A transformers backbone_config needs a 'model_type' (e.g. 'vit', 'resnet', 'bert'); build it with "
            "`SomeConfig(...).to_dict()` or pass a checkpoint directory to `BT2Model.from_pretrained_backbone`."
        )
    for key in ("transformers_version", "architectures", "_name_or_path", "auto_map"):
        config.pop(key, None)
    return AutoConfig.for_model(model_type, **config)


class HFBackbone(Backbone):
    """A transformers model built with ``AutoModel.from_config`` (random init, no download)."""

    def __init__(self, backbone_config: dict[str, Any], pooling: str):
        hf_config = hf_config_from_dict(backbone_config)
        if pooling == "default":
            pooling = self.default_pooling(hf_config.model_type)
        super().__init__(hf_config.to_dict(), pooling)
        self.model = AutoModel.from_config(hf_config, **self._model_kwargs(hf_config))

    def default_pooling(self, model_type: str) -> str:
        raise NotImplementedError

    def _model_kwargs(self, hf_config: PreTrainedConfig) -> dict[str, Any]:
        model_class = AutoModel._model_mapping[type(hf_config)]
        if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
            # Drop the pooler when we do not read it, so that every parameter receives a gradient.
            return {"add_pooling_layer": self.pooling == "pooler"}
        return {}

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        if getattr(config, "neck_hidden_sizes", None):  # MobileViT: the last 1×1 "expand" conv is what is pooled
            return int(config.neck_hidden_sizes[-1])
        if getattr(config, "hidden_sizes", None):
            return int(config.hidden_sizes[-1])
        if isinstance(getattr(config, "embed_dim", None), (list, tuple)):  # CvT: one width per stage
            return int(config.embed_dim[-1])
        return int(config.hidden_size)

    @classmethod
    def config_from_pretrained(cls, name_or_path: str, **hub_kwargs: Any) -> dict[str, Any]:
        return AutoConfig.from_pretrained(name_or_path, **hub_kwargs).to_dict()

    def load_pretrained_weights(self, name_or_path: str, **hub_kwargs: Any) -> None:
        from transformers.utils import logging as transformers_logging

        # transformers prints a load report of the keys it skipped (a pooler this backbone does not read); the
        # strict comparison below is ours, and it names any real mismatch.
        verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()  # a bar per load of a small file is noise; ours say what loads
        try:
            pretrained = AutoModel.from_pretrained(name_or_path, **self._model_kwargs(self.model.config), **hub_kwargs)
        finally:
            transformers_logging.set_verbosity(verbosity)
            if bars:
                transformers_logging.enable_progress_bar()
        missing, unexpected = self.model.load_state_dict(pretrained.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"The checkpoint {name_or_path} does not match the backbone built from its config "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})."
            )

    @property
    def _no_split_modules(self) -> set[str]:
        # The wrapped model's own unsplittable layers (its encoder blocks): BT2Model.post_init collects them from its
        # children, so FSDP auto-wrapping and device maps see the backbone's layers.
        return set(getattr(self.model, "_no_split_modules", None) or [])

    def set_gradient_checkpointing(self, enable: bool, gradient_checkpointing_kwargs: dict | None = None) -> None:
        if enable:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        else:
            self.model.activation_checkpointing_disable()


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens that the attention mask keeps (all tokens when there is no mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
