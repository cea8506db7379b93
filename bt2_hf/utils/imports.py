"""Optional dependencies: import them lazily and fail with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

_PIP_NAMES = {"open_clip": "open_clip_torch", "faiss": "faiss-cpu", "accelerate": "accelerate", "datasets": "datasets"}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an `ImportError` saying which pip extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pip_name = _PIP_NAMES.get(module, module)
        raise ImportError(
            f"{module!r} is needed here but is not installed. Install it with `pip install 'bt2_hf[{extra}]'` "
            f"(or `pip install {pip_name}`)."
        ) from error
