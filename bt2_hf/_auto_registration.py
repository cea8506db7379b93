"""Register the bt2_hf classes with transformers' Auto classes without making ``import bt2_hf`` import transformers.

``import bt2_hf`` promises that ``AutoConfig``, ``AutoModel`` and ``AutoImageProcessor`` (and through them
``pipeline`` and sentence-transformers) know bt2_hf checkpoints, with no ``trust_remote_code``. Importing transformers
and torch takes seconds, which ``bt2 --help`` must not pay, so the registration runs as soon as transformers is
usable instead of when ``bt2_hf`` is imported:

- at once, when transformers is already imported;
- otherwise right after transformers' first import (a finder on ``sys.meta_path`` wraps its loader);
- and when that first import happens while a bt2_hf module is itself still being imported (for example
  ``from bt2_hf.backbones import ...`` imports transformers half-way), at the end of the outermost bt2_hf module's
  import: registering earlier would import ``bt2_hf.modeling_bt2``, which needs the half-built module.

Once registered, the finder leaves ``sys.meta_path``.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_PACKAGE = "bt2_hf"
_registered = False
# True once transformers is imported and the registration waits for a bt2_hf module to finish its own import.
_waiting_for_package = False


def register_auto_classes() -> None:
    """Register :class:`BT2Config`, :class:`BT2Model` and :class:`BT2ImageProcessor` with transformers (idempotent).

    Importing ``bt2_hf`` arranges for this to run; call it directly only to register before transformers is
    otherwise imported.

    Example:

    ```python
    >>> import bt2_hf
    >>> from transformers import AutoConfig
    >>> from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    >>> "bt2_hf_encoder" in CONFIG_MAPPING
    True
    ```
    """
    global _registered, _waiting_for_package
    if _registered:
        return
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from .configuration_bt2 import BT2Config
    from .modeling_bt2 import BT2Model
    from .processing import BT2ImageProcessor

    AutoConfig.register(BT2Config.model_type, BT2Config, exist_ok=True)
    AutoModel.register(BT2Config, BT2Model, exist_ok=True)
    # AutoImageProcessor and pipeline("image-feature-extraction") find the processor of any saved bt2_hf image model.
    AutoImageProcessor.register(BT2Config, image_processor_classes={"torchvision": BT2ImageProcessor, "pil": BT2ImageProcessor}, exist_ok=True)  # fmt: skip
    _registered = True
    _waiting_for_package = False
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RegisterAfterImport)]


def _is_initializing(module_name: str) -> bool:
    # importlib marks a module's spec with ``_initializing`` while the module's code runs (CPython since 3.4).
    spec = getattr(sys.modules.get(module_name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _package_module_initializing(besides: str) -> bool:
    """Whether a bt2_hf module other than ``besides`` (and the package's ``__init__``) is still being imported."""
    return any(
        name.startswith(_PACKAGE + ".") and name != besides and _is_initializing(name) for name in list(sys.modules)
    )


def _after_import(module_name: str) -> None:
    global _waiting_for_package
    if _registered:
        return
    if module_name == "transformers":
        _waiting_for_package = True
    if _waiting_for_package and not _package_module_initializing(besides=module_name):
        register_auto_classes()


class _RunAfterExec:
    """A loader that runs another loader, then :func:`_after_import`; the module keeps the original loader."""

    def __init__(self, loader: Any, module_name: str):
        self._loader = loader
        self._module_name = module_name

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_code, ...
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        _after_import(self._module_name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of transformers and of bt2_hf's modules in :class:`_RunAfterExec`."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "transformers" and not fullname.startswith(_PACKAGE + "."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfterExec(spec.loader, fullname)
                return spec
        return None


def register_when_transformers_loads() -> None:
    """Register now if transformers is imported, else as soon as it is (see the module's docstring)."""
    if "transformers" in sys.modules and not _is_initializing("transformers"):
        register_auto_classes()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
