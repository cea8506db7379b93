"""open_clip image and text towers as BT² backbones (built from a config; pretrained weights from ``hf-hub:``, a
local open_clip folder or a weights file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..utils.imports import require
from . import register_backbone
from .base import Backbone


def _build_clip(backbone_config: dict[str, Any]):
    """An open_clip ``CLIP`` model from ``{"model_cfg": {...}}`` or ``{"model_name": "ViT-B-32"}``, random init."""
    open_clip = require("open_clip", extra="open_clip")
    if backbone_config.get("model_cfg"):
        model_cfg = dict(backbone_config["model_cfg"])
        model_cfg.pop("custom_text", None)
        return open_clip.CLIP(**model_cfg)
    name = backbone_config.get("model_name")
    if not name:
        raise ValueError("An open_clip backbone_config needs 'model_name' (e.g. 'ViT-B-32') or 'model_cfg'.")
    if name not in open_clip.list_models():
        raise ValueError(f"Unknown open_clip model_name {name!r}; see open_clip.list_models().")
    return open_clip.create_model(name, pretrained=None)


def _resolve_config(backbone_config: dict[str, Any]) -> dict[str, Any]:
    """Pin the full architecture in the config, so a reload never depends on open_clip's registry."""
    config = dict(backbone_config)
    if not config.get("model_cfg"):
        open_clip = require("open_clip", extra="open_clip")
        model_cfg = open_clip.get_model_config(config.get("model_name", ""))
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip model_name {config.get('model_name')!r}; see open_clip.list_models()."
            )
        config["model_cfg"] = model_cfg
    return config


class _OpenCLIPTower(Backbone):
    poolings = ("default",)
    _no_split_modules = {"ResidualAttentionBlock"}

    def set_gradient_checkpointing(self, enable: bool, gradient_checkpointing_kwargs: dict | None = None) -> None:
        tower = getattr(self, "visual", None) or self.clip
        tower.set_grad_checkpointing(enable)

    def __init__(self, backbone_config: dict[str, Any], pooling: str = "default"):
        super().__init__(_resolve_config(backbone_config), pooling)

    @classmethod
    def config_from_pretrained(cls, name_or_path: str, **hub_kwargs: Any) -> dict[str, Any]:
        config_path = _open_clip_file(name_or_path, OPEN_CLIP_CONFIG, hub_kwargs)
        if config_path is None:
            raise ValueError(
                f"{name_or_path} is an open_clip weights file without its open_clip_config.json: give the "
                "architecture as backbone_config={'model_name': ...} (or 'model_cfg'), or pass an 'hf-hub:<repo id>' "
                "or a folder holding open_clip_config.json."
            )
        saved = json.loads(Path(config_path).read_text(encoding="utf-8"))
        if "model_cfg" not in saved:
            raise ValueError(f"{config_path} has no 'model_cfg'; it is not an open_clip config.")
        return {"model_cfg": saved["model_cfg"], "preprocess_cfg": saved.get("preprocess_cfg") or {}}

    def load_pretrained_weights(self, name_or_path: str, **hub_kwargs: Any) -> None:
        path = next(
            (found for name in OPEN_CLIP_WEIGHTS if (found := _open_clip_file(name_or_path, name, hub_kwargs))),
            None,
        )
        if path is None:
            raise FileNotFoundError(f"No open_clip weights ({' or '.join(OPEN_CLIP_WEIGHTS)}) in {name_or_path}.")
        # Weights files from open_clip hold the whole CLIP model; keep the keys of our tower only.
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = state_dict.get("state_dict", state_dict)
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        own = self._tower_state_dict_from_clip(state_dict)
        missing, unexpected = self.load_state_dict(own, strict=False)
        if missing:
            raise ValueError(
                f"The open_clip weights at {name_or_path} miss {len(missing)} tensors of this tower: {missing[:5]}"
            )


OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip_file(name_or_path: str, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """``filename`` of an open_clip checkpoint: ``hf-hub:<repo id>`` (through the Hub cache), a folder, or the weights
    file itself (which has no config next to it by name)."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return hf_hub_download(name_or_path.removeprefix("hf-hub:"), filename, library_name="bt2_hf", **hub_kwargs)
        except EntryNotFoundError:
            return None
    if os.path.isdir(name_or_path):
        candidate = os.path.join(name_or_path, filename)
        return candidate if os.path.isfile(candidate) else None
    if os.path.isfile(name_or_path):
        return name_or_path if filename in OPEN_CLIP_WEIGHTS else None
    raise FileNotFoundError(
        f"No open_clip checkpoint at {name_or_path}: pass 'hf-hub:<repo id>', a folder with open_clip_config.json "
        "and weights, or a weights file."
    )


@register_backbone("open_clip_vision")
class OpenCLIPVisionBackbone(_OpenCLIPTower):
    """The image tower of an open_clip model: ``encode_image`` features (before normalisation)."""

    modality = "image"

    @classmethod
    def default_processor(cls, backbone_config: dict[str, Any]) -> Any:
        from ..processing import open_clip_image_processor

        vision_cfg = backbone_config.get("model_cfg", {}).get("vision_cfg", {})
        return open_clip_image_processor(vision_cfg.get("image_size", 224), backbone_config.get("preprocess_cfg"))

    main_input_name = "pixel_values"

    def __init__(self, backbone_config: dict[str, Any], pooling: str = "default"):
        super().__init__(backbone_config, pooling)
        self.visual = _build_clip(self.backbone_config).visual

    @property
    def hidden_size(self) -> int:
        return int(self.visual.output_dim)

    def forward(self, pixel_values: torch.Tensor, **unused: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)

    def _tower_state_dict_from_clip(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state_dict.items() if k.startswith("visual.")}

    def pretrained_processor(self, name_or_path: str, **hub_kwargs: Any) -> Any:
        """open_clip's evaluation preprocessing from the checkpoint's ``preprocess_cfg`` (bicubic, centre crop, …)."""
        from ..processing import open_clip_image_processor

        return open_clip_image_processor(
            self.backbone_config["model_cfg"].get("vision_cfg", {}).get("image_size", 224),
            self.backbone_config.get("preprocess_cfg"),
            source=f"{name_or_path} (open_clip preprocess_cfg)",
        )


@register_backbone("open_clip_text")
class OpenCLIPTextBackbone(_OpenCLIPTower):
    """The text tower of an open_clip model: ``encode_text`` features (before normalisation)."""

    modality = "text"
    sentence_transformers = False  # its tokenizer is open_clip's, not a transformers one

    @classmethod
    def default_processor(cls, backbone_config: dict[str, Any]) -> Any:
        from ..processing import OpenCLIPTokenizer

        text_cfg = backbone_config.get("model_cfg", {}).get("text_cfg", {})
        return OpenCLIPTokenizer(backbone_config.get("model_name"), text_cfg.get("context_length", 77))

    main_input_name = "input_ids"

    def __init__(self, backbone_config: dict[str, Any], pooling: str = "default"):
        super().__init__(backbone_config, pooling)
        clip = _build_clip(self.backbone_config)
        del clip.visual  # the text tower never uses it; dropping it saves memory and dead parameters
        clip.logit_scale.requires_grad_(False)
        self.clip = clip

    @property
    def hidden_size(self) -> int:
        projection = self.clip.text_projection
        return int(projection.shape[1] if isinstance(projection, torch.Tensor) else projection.out_features)

    def forward(self, input_ids: torch.Tensor, **unused: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids)

    @torch.no_grad()
    def restore_computed_buffers(self) -> None:
        # open_clip's causal mask (-inf above the diagonal) is a non-persistent buffer: rebuild it after loading
        mask = self.clip.attn_mask
        if mask is None:  # a text tower without a causal mask (e.g. SigLIP's)
            return
        causal = torch.full(mask.shape, float("-inf"), device=mask.device).triu_(1)
        self.clip.attn_mask = causal.to(mask.dtype)

    def _tower_state_dict_from_clip(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"clip.{k}": v for k, v in state_dict.items() if not k.startswith("visual.")}
