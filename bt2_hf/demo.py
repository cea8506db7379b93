"""Moved to :mod:`bt2_hf.pipelines.demo`; ``from bt2_hf.demo import ...`` keeps working."""

from .pipelines.demo import *  # noqa: F401, F403
