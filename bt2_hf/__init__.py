"""bt2_hf: backward-compatible embedding models (BT²) for the Hugging Face ecosystem.

Importing the package registers :class:`BT2Config` / :class:`BT2Model` with ``AutoConfig`` / ``AutoModel``, so
``AutoModel.from_pretrained(path)`` returns a bt2_hf model with no ``trust_remote_code``; ``BT2ImageProcessor`` with
``AutoImageProcessor``, so ``AutoImageProcessor.from_pretrained(path)`` and ``pipeline("image-feature-extraction")``
work on saved bt2_hf image models. The import itself is light: the public names load on first use and the
registration runs once transformers is imported (:mod:`bt2_hf._auto_registration`).
"""

from __future__ import annotations

# The package version's single source (pyproject.toml reads it; set first so that modules imported below see it).
__version__ = "0.1.0"

import importlib
from typing import Any

from ._auto_registration import register_when_transformers_loads

# The public names, imported on first use: ``import bt2_hf`` stays light (no torch or transformers), so ``bt2 --help``
# answers at once. The Auto classes still know bt2_hf as soon as transformers is imported (_auto_registration.py).
_PUBLIC_NAMES = {
    "IncompatibleModelsError": ".compatibility",
    "compatible_prefix": ".compatibility",
    "BT2Config": ".configuration_bt2",
    "fingerprint_model": ".fingerprint",
    "fingerprint_state_dict": ".fingerprint",
    "BasisTransformationHead": ".heads",
    "LinearHead": ".heads",
    "OrthogonalLinear": ".heads",
    "CompatibilityMetadataError": ".hub",
    "declare_compatibility": ".hub",
    "push_to_hub": ".hub",
    "render_model_card": ".hub",
    "resolve_query_model": ".hub",
    "validate_compatibility_metadata": ".hub",
    "BT2Model": ".modeling_bt2",
    "BT2Output": ".modeling_bt2",
    "BT2PreTrainedModel": ".modeling_bt2",
    "FingerprintMismatchError": ".modeling_bt2",
    "BT2ImageProcessor": ".processing",
    "ImageInputError": ".processing",
    "VerificationResult": ".verify",
    "verify_compatibility": ".verify",
    "verify_retrieval_set": ".verify",
    "adapt_model": ".adapt",
    "attach_adapter": ".adapt",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC_NAMES:
        raise AttributeError(f"module 'bt2_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC_NAMES[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC_NAMES))


register_when_transformers_loads()

__all__ = [
    "BT2Config",
    "BT2ImageProcessor",
    "BT2Model",
    "BT2Output",
    "BT2PreTrainedModel",
    "BasisTransformationHead",
    "CompatibilityMetadataError",
    "FingerprintMismatchError",
    "ImageInputError",
    "IncompatibleModelsError",
    "LinearHead",
    "OrthogonalLinear",
    "__version__",
    "compatible_prefix",
    "declare_compatibility",
    "fingerprint_model",
    "fingerprint_state_dict",
    "push_to_hub",
    "render_model_card",
    "resolve_query_model",
    "validate_compatibility_metadata",
    "VerificationResult",
    "adapt_model",
    "attach_adapter",
    "verify_compatibility",
    "verify_retrieval_set",
]
