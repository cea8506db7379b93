"""Compatibility methods: a registry (config dataclass + loss hooks, one ``compute_loss`` signature).

Image towers: ``independent``, ``bct``, ``bt2``. Text towers on image–text data: ``independent_text``, ``bct_text``,
``bt2_text``. Image–text pairs (two towers together): ``clip``, ``bt2_pair``. Outside the registry (trained on cached
features, not by ``bt2 train``): BT² and BCT heads for query → document retrieval (:mod:`.retrieval`).

>>> from bt2_hf.methods import get_method, list_methods
>>> list_methods()
['bct', 'bct_text', 'bt2', 'bt2_pair', 'bt2_text', 'clip', 'independent', 'independent_text']
>>> method = get_method("bt2")  # default BT2MethodConfig
>>> method.requires, method.config.old_match_weight
(('old', 'independent'), 5.0)
"""

from __future__ import annotations

from typing import Any

from .base import CompatibilityMethod, MethodConfig, PrototypeInfluenceConfig

_METHODS: dict[str, type[CompatibilityMethod]] = {}


def register_method(method_class: type[CompatibilityMethod]) -> type[CompatibilityMethod]:
    """Class decorator adding a :class:`CompatibilityMethod` subclass to the registry under its ``name``.

    >>> from dataclasses import dataclass
    >>> from bt2_hf.methods import CompatibilityMethod, MethodConfig, register_method
    >>> @register_method
    ... class MyMethod(CompatibilityMethod):
    ...     name = "my_method"
    ...     config_class = MethodConfig
    """
    name = method_class.name
    if not name:
        raise ValueError(f"{method_class.__name__} has no `name`; set the class attribute before registering.")
    if name in _METHODS and _METHODS[name] is not method_class:
        raise ValueError(f"A method named {name!r} is already registered ({_METHODS[name].__name__}).")
    _METHODS[name] = method_class
    return method_class


def get_method_class(name: str) -> type[CompatibilityMethod]:
    """The registered method class called ``name``."""
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {list_methods()}.")
    return _METHODS[name]


def get_method(name: str, config: MethodConfig | dict[str, Any] | None = None) -> CompatibilityMethod:
    """An instance of the method ``name`` with ``config`` (a config object, a dict of fields, or the defaults)."""
    method_class = get_method_class(name)
    if isinstance(config, dict):
        config = method_class.config_class(**config)
    return method_class(config)


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


from .bct import BCTConfig, BCTMethod  # noqa: E402
from .bt2 import BT2Method, BT2MethodConfig  # noqa: E402
from .independent import IndependentConfig, IndependentMethod  # noqa: E402
from .pair import BT2PairConfig, BT2PairMethod, CLIPPairConfig, CLIPPairMethod  # noqa: E402
from .retrieval import RetrievalHeadConfig, retrieval_head_losses  # noqa: E402
from .text import (  # noqa: E402
    BCTTextConfig,
    BCTTextMethod,
    BT2TextConfig,
    BT2TextMethod,
    ContrastiveConfig,
    IndependentTextConfig,
    IndependentTextMethod,
)

__all__ = [
    "BCTConfig",
    "BCTMethod",
    "BCTTextConfig",
    "BCTTextMethod",
    "BT2Method",
    "BT2MethodConfig",
    "BT2PairConfig",
    "BT2PairMethod",
    "BT2TextConfig",
    "BT2TextMethod",
    "CLIPPairConfig",
    "CLIPPairMethod",
    "CompatibilityMethod",
    "ContrastiveConfig",
    "IndependentConfig",
    "IndependentMethod",
    "IndependentTextConfig",
    "IndependentTextMethod",
    "MethodConfig",
    "PrototypeInfluenceConfig",
    "RetrievalHeadConfig",
    "get_method",
    "get_method_class",
    "list_methods",
    "register_method",
    "retrieval_head_losses",
]
