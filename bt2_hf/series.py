"""Moved to :mod:`bt2_hf.pipelines.series`; ``from bt2_hf.series import ...`` keeps working."""

from .pipelines.series import *  # noqa: F401, F403
