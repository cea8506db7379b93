"""Moved to :mod:`bt2_hf.pipelines.demo_data`; ``from bt2_hf.demo_data import ...`` keeps working."""

from .pipelines.demo_data import *  # noqa: F401, F403
