"""A small registry of encoders. Each backbone is built from a config dict and returns pooled features.

>>> from bt2_hf.backbones import list_backbones
>>> sorted(list_backbones())  # doctest: +NORMALIZE_WHITESPACE
['hf_text', 'hf_vision', 'open_clip_text', 'open_clip_vision', 'small_cnn']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Backbone

_BACKBONES: dict[str, type[Backbone]] = {}


def register_backbone(name: str) -> Callable[[type[Backbone]], type[Backbone]]:
    """Class decorator adding a :class:`Backbone` subclass to the registry under ``name``."""

    def decorator(cls: type[Backbone]) -> type[Backbone]:
        if name in _BACKBONES and _BACKBONES[name] is not cls:
            raise ValueError(f"A backbone named {name!r} is already registered ({_BACKBONES[name].__name__}).")
        _BACKBONES[name] = cls
        return cls

    return decorator


def get_backbone_class(name: str) -> type[Backbone]:
    """The backbone class registered as ``name``; a clear error lists the known names otherwise."""
    if name not in _BACKBONES:
        raise ValueError(f"Unknown backbone_type {name!r}. Known backbones: {sorted(_BACKBONES)}.")
    return _BACKBONES[name]


def list_backbones() -> list[str]:
    """Names of every registered backbone."""
    return list(_BACKBONES)


def build_backbone(backbone_type: str, backbone_config: dict[str, Any] | None, pooling: str = "default") -> Backbone:
    """Instantiate a registered backbone from its config dict (no download)."""
    cls = get_backbone_class(backbone_type)
    return cls(dict(backbone_config or {}), pooling)


# Importing the modules registers the built-in backbones.
from . import hf_text, hf_vision, open_clip, small_cnn  # noqa: E402, F401

__all__ = ["Backbone", "build_backbone", "get_backbone_class", "list_backbones", "register_backbone"]
