"""bt2_hf: backward-compatible embedding models (BT²) for the Hugging Face ecosystem.

Importing the package registers :class:`BT2Config` / :class:`BT2Model` with ``AutoConfig`` / ``AutoModel``, so
``AutoModel.from_pretrained(path)`` returns a bt2_hf model with no ``trust_remote_code``; ``BT2ImageProcessor`` with
``AutoImageProcessor``, so ``AutoImageProcessor.from_pretrained(path)`` and ``pipeline("image-feature-extraction")``
work on saved bt2_hf image models.
"""

from __future__ import annotations

# The package version's single source (pyproject.toml reads it; set first so that modules imported below see it).
__version__ = "0.1.0"

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .compatibility import IncompatibleModelsError, compatible_prefix
from .configuration_bt2 import BT2Config
from .fingerprint import fingerprint_model, fingerprint_state_dict
from .heads import BasisTransformationHead, LinearHead, OrthogonalLinear
from .hub import (
    CompatibilityMetadataError,
    declare_compatibility,
    push_to_hub,
    render_model_card,
    resolve_query_model,
    validate_compatibility_metadata,
)
from .modeling_bt2 import BT2Model, BT2Output, BT2PreTrainedModel, FingerprintMismatchError
from .processing import BT2ImageProcessor, ImageInputError
from .verify import VerificationResult, verify_compatibility

AutoConfig.register(BT2Config.model_type, BT2Config, exist_ok=True)
AutoModel.register(BT2Config, BT2Model, exist_ok=True)
# AutoImageProcessor and pipeline("image-feature-extraction") find the processor of any saved bt2_hf image model.
AutoImageProcessor.register(BT2Config, image_processor_classes={"torchvision": BT2ImageProcessor, "pil": BT2ImageProcessor}, exist_ok=True)  # fmt: skip

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
    "verify_compatibility",
]
