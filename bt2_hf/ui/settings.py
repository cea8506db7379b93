"""What the upgrade page shows: two models, the old gallery, its backfilled copy and the gallery's dataset.

:class:`UpgradeSettings` is plain data (saved as ``ui.json`` beside the copies that :func:`bt2_hf.ui.prepare_upgrade`
makes), so ``bt2 ui --config ui.json`` and a Space's ``app.py`` open the page again without preparing anything.
:func:`bt2_hf.ui.settings_from_env` reads them from environment variables (``ENV_*`` below), for ``app.py``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import BT2InputError

SETTINGS_FILE = "ui.json"
# Environment variables read by prepare.settings_from_env (app.py): a config file, a demo output folder, or explicit paths.
PATH_FIELDS = ("old_model", "new_model", "old_gallery", "backfilled_gallery", "data", "source_gallery")
ENV_CONFIG = "BT2_UI_CONFIG"
ENV_DEMO_OUTPUT = "BT2_UI_DEMO_OUTPUT"
ENV_PATHS = {
    "old_model": "BT2_UI_OLD_MODEL",
    "new_model": "BT2_UI_NEW_MODEL",
    "gallery": "BT2_UI_GALLERY",
    "data": "BT2_UI_DATA",
    "split": "BT2_UI_SPLIT",
    "work_dir": "BT2_UI_WORK_DIR",
}
ENV_FRACTION = "BT2_UI_BACKFILL_FRACTION"
ENV_REQUIRED_METRICS = "BT2_UI_REQUIRED_METRICS"  # comma-separated, e.g. "mAP"
ENV_ALLOW_UNMEASURED = "BT2_UI_ALLOW_UNMEASURED"
ENV_GATE = "BT2_UI_GATE"  # measure the new model on the gallery's probe set


@dataclass
class UpgradeSettings:
    """The models and galleries of one upgrade page.

    Args:
        old_model (`str`): the old model's checkpoint (the encoder of ``old_gallery``).
        new_model (`str`): the new, BT²-compatible model's checkpoint.
        old_gallery (`str`): the gallery the first two lists search: the user's own gallery (read only), or the
            page's copy of it when the page applies its own admission policy.
        backfilled_gallery (`str`, *optional*): the page's copy of the old gallery, backfilled with the new model;
            ``None`` when the new model cannot embed the gallery's items (a text tower over an image gallery).
        data (`str`, *optional*): the gallery's dataset (for the backfill and the thumbnails).
        split (`str`, *optional*): its split.
        allow_unmeasured (`bool`, *optional*, defaults to `False`): admit a query model whose compatibility is declared
            but not measured (shown on the page as an override).
        title (`str`, *optional*): the page's title.
        source_gallery (`str`, *optional*): the user's gallery the copies were made from.
    """

    old_model: str
    new_model: str
    old_gallery: str
    backfilled_gallery: str | None = None
    data: str | None = None
    split: str | None = None
    allow_unmeasured: bool = False
    title: str | None = None
    source_gallery: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, base: Path | None = None) -> UpgradeSettings:
        """Settings from a dict (``ui.json``); relative paths are read relative to ``base``."""
        if not isinstance(values, dict):
            raise BT2InputError(f"the UI settings must be a JSON object, got {type(values).__name__}.")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BT2InputError(f"unknown UI settings {unknown}; known ones are {sorted(known)}.")
        missing = [name for name in ("old_model", "new_model", "old_gallery") if not values.get(name)]
        if missing:
            raise BT2InputError(f"the UI settings lack {missing}: prepare them with `bt2 ui --prepare_only`.")
        values = dict(values)
        if base is not None:
            for name in PATH_FIELDS:
                value = values.get(name)
                if value and not Path(value).is_absolute():
                    values[name] = os.path.normpath(Path(base).absolute() / value)
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UpgradeSettings:
        """Read ``ui.json`` (a file, or the folder holding it)."""
        from ..utils.readers import read_json

        path = Path(path)
        path = path / SETTINGS_FILE if path.is_dir() else path
        return cls.from_dict(read_json(path, "UI settings file"), base=path.parent)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/ui.json`` atomically, its local paths relative to ``folder``."""
        from ..utils.io import atomic_write_json

        path = Path(folder) / SETTINGS_FILE
        values = self.to_dict()
        for name in PATH_FIELDS:
            # Relative paths become relative to the file's folder, so that the folder (a demo output, say) can move
            # or be uploaded with what it names; absolute ones (a system data set) stay as they are.
            if values.get(name) and not Path(values[name]).is_absolute() and Path(values[name]).exists():
                values[name] = os.path.relpath(Path(values[name]).absolute(), Path(folder).absolute())
        atomic_write_json(path, values)
        return path
