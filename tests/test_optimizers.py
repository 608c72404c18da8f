"""The one optimisation loop: the best image kept, the budget never overrun, Adam's step independent of the loss's scale."""

import math

import pytest
import torch

from onnxstyle.errors import NumericalError
from onnxstyle.losses import LossTerms
from onnxstyle.optimizers import Descent, cosine_factor

TARGET = torch.linspace(0.2, 0.8, 48).reshape(1, 3, 4, 4)


def quadratic(scale=1.0):
    def evaluate(image):
        difference = image - TARGET
        total = scale * float((difference**2).sum())
        return LossTerms(total, [], [], 0.0), 2 * scale * difference

    return evaluate


class Clock:
    def __init__(self, step=1.0):
        self.now, self.step = 0.0, step

    def __call__(self):
        return self.now


def ticking(evaluate, clock):
    def run(image):
        clock.now += clock.step
        return evaluate(image)

    return run


def test_cosine_factor_falls_from_one_to_its_floor():
    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(0.1) and cosine_factor(2.0) == pytest.approx(0.1)
    assert cosine_factor(0.5) == pytest.approx(0.55)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_the_loss_falls_and_the_best_image_is_the_lowest_evaluated(optimizer):
    start = torch.full((1, 3, 4, 4), 0.5)
    descent = Descent(quadratic(), start, optimizer=optimizer, iterations=60)
    descent.run()
    assert descent.ended_by == "iterations" and len(descent.losses) <= 60
    assert descent.best_loss == min(descent.losses) < 0.01 * descent.losses[0]
    assert float(((descent.best - TARGET) ** 2).sum()) == pytest.approx(descent.best_loss)


def test_adam_takes_the_same_steps_whatever_the_scale_of_the_loss():
    """The gradient is scaled to a mean magnitude of 1 each step: a loss of 1e8 moves the pixels as a loss of 1 does."""
    runs = []
    for scale in (1.0, 1e8):
        descent = Descent(quadratic(scale), torch.full((1, 3, 4, 4), 0.5), optimizer="adam", iterations=30)
        descent.run()
        runs.append(descent.best)
    assert torch.allclose(runs[0], runs[1], atol=1e-6)


def test_no_evaluation_starts_that_would_end_past_the_deadline():
    clock = Clock(step=2.0)
    descent = Descent(ticking(quadratic(), clock), torch.full((1, 3, 4, 4), 0.5), optimizer="adam", iterations=10**9, deadline=9.0, clock=clock)
    descent.run()
    # 2-s evaluations end at 2, 4, 6, 8; a fifth would end at 10
    assert descent.ended_by == "time" and len(descent.losses) == 4 and clock.now == 8.0


def test_the_first_evaluation_predicts_nothing():
    """A first evaluation carries one-off costs: a slow one does not stop the second when there is time for it."""
    clock = Clock(step=0.0)
    durations = iter([8.0] + [1.0] * 100)

    def evaluate(image):
        clock.now += next(durations)
        return quadratic()(image)

    descent = Descent(evaluate, torch.full((1, 3, 4, 4), 0.5), optimizer="lbfgs", iterations=10**9, deadline=10.0, clock=clock)
    descent.run()
    assert len(descent.losses) == 3 and clock.now == 10.0


def test_a_nan_stops_the_run_with_the_best_image_kept():
    calls = {"count": 0}

    def evaluate(image):
        calls["count"] += 1
        if calls["count"] == 4:
            return LossTerms(math.nan, [], [], 0.0), torch.zeros_like(image)
        return quadratic()(image)

    descent = Descent(evaluate, torch.full((1, 3, 4, 4), 0.5), optimizer="adam", iterations=10)
    with pytest.raises(NumericalError, match="loss became nan at evaluation 4"):
        descent.run()
    assert len(descent.losses) == 3 and descent.improved()
