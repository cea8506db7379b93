"""The upgrade page: one query, three result lists (old model / old gallery, new model / old gallery, new model /
backfilled gallery), each model's verdict and the backfill's progress (``bt2 ui``, ``app.py`` for a Space).

- :func:`prepare_upgrade` / :func:`prepare_demo`: copy the old gallery and backfill the copy (the user's gallery is
  never modified); the page's settings are saved as ``ui.json`` (:class:`UpgradeSettings`).
- :class:`UpgradeView`: the three searches, verdicts and progress, through the library (no web framework).
- :func:`build_page` / :func:`launch_page`: the Gradio page (Gradio is imported only when a page is built).
"""

from .page import build_page, launch_page
from .prepare import copy_gallery, prepare_demo, prepare_upgrade, settings_from_env
from .settings import UpgradeSettings
from .view import ColumnResult, ModelVerdict, UpgradeView

__all__ = [
    "ColumnResult",
    "ModelVerdict",
    "UpgradeSettings",
    "UpgradeView",
    "build_page",
    "copy_gallery",
    "launch_page",
    "prepare_demo",
    "prepare_upgrade",
    "settings_from_env",
]
