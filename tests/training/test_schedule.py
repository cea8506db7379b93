"""The learning-rate schedule against hand-computed multipliers (transformers' get_scheduler conventions)."""

import math

import pytest
import torch

from bt2_hf.training import build_lr_scheduler

PEAK = 0.1


def _learning_rates(schedule: str, warmup: int, total: int) -> list[float]:
    """The learning rate each of the ``total`` optimizer steps uses."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    scheduler = build_lr_scheduler(optimizer, schedule, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_warmup():
    # warm-up s/2 for s < 2, then 0.5 (1 + cos(pi (s - 2) / 4)): 1, cos²(pi/8), 1/2, sin²(pi/8)
    expected = [0.0, 0.5, 1.0, 0.8535533905932737, 0.5, 0.14644660940672624]
    assert _learning_rates("cosine", 2, 6) == pytest.approx([PEAK * m for m in expected], abs=1e-12)


def test_cosine_without_warmup_starts_at_the_peak():
    expected = [0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]  # 1, 0.854, 0.5, 0.146
    assert _learning_rates("cosine", 0, 4) == pytest.approx([PEAK * m for m in expected], abs=1e-12)


def test_constant_keeps_the_warmup():
    assert _learning_rates("constant", 4, 6) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1], abs=1e-12)


def test_unknown_schedule_is_refused_with_the_choices():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    with pytest.raises(ValueError, match=r"'linear'.*\['cosine', 'constant'\]"):
        build_lr_scheduler(optimizer, "linear", 0, 10)
