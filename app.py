"""The upgrade page as a Hugging Face Space (or any host): ``python app.py``.

Configured by environment variables (see :func:`bt2_hf.ui.settings_from_env`), one of:

- ``BT2_UI_CONFIG``: a ``ui.json`` written by ``bt2 ui --prepare_only`` (or its folder);
- ``BT2_UI_DEMO_OUTPUT``: a ``bt2 demo`` output folder (the backfilled copy is made in it on the first start);
- ``BT2_UI_OLD_MODEL``, ``BT2_UI_NEW_MODEL``, ``BT2_UI_GALLERY``, ``BT2_UI_DATA`` (+ ``BT2_UI_SPLIT``) and
  ``BT2_UI_WORK_DIR``; with ``BT2_UI_BACKFILL_FRACTION``, ``BT2_UI_REQUIRED_METRICS`` (e.g. ``mAP``) and
  ``BT2_UI_ALLOW_UNMEASURED``.

The address comes from Gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (a Space sets them; elsewhere
127.0.0.1:7860). Gradio's analytics are off and no share link is made.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from bt2_hf.ui import UpgradeView, build_page, launch_page, settings_from_env  # noqa: E402

if __name__ == "__main__":
    page = build_page(UpgradeView(settings_from_env(), device=os.environ.get("BT2_UI_DEVICE")))
    launch_page(page, host=None, port=None, block=True)
