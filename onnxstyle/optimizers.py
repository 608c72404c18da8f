"""The optimisers that move the pixels, and the one loop that drives them for ``stylize`` and ``converge``.

An engine only supplies the loss and its gradient; what happens between evaluations (which optimiser, its
step, the time budget, which image is kept) is decided here once, so a converge measurement runs exactly
the loop a user's ``stylize`` runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch

from onnxstyle.defaults import ADAM_FINAL_FRACTION, LEARNING_RATE
from onnxstyle.errors import NumericalError, UsageError
from onnxstyle.losses import LossTerms

OptimizerName = Literal["lbfgs", "adam", "adam-plain"]
# adam-plain is Adam as the classic tools and the eager baseline run it (a constant step on the raw gradient):
# there to be measured against ours.
OPTIMIZERS: tuple[OptimizerName, ...] = ("lbfgs", "adam", "adam-plain")

Evaluate = Callable[[torch.Tensor], tuple[LossTerms, torch.Tensor]]
# Heard after every evaluation: (its number from 1, its loss terms, the image it evaluated, before the step moves it).
OnEvaluation = Callable[[int, LossTerms, torch.Tensor], None]


def check_optimizer(name: str) -> OptimizerName:
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{name}'; choose {' or '.join(OPTIMIZERS)}")
    return name  # type: ignore[return-value]


def cosine_factor(progress: float, final_fraction: float = ADAM_FINAL_FRACTION) -> float:
    """Adam's step as a fraction of its first: a half cosine from 1 down to ``final_fraction`` as the budget is spent."""
    done = min(max(progress, 0.0), 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * done))


class OutOfTime(Exception):
    """Raised inside the optimiser's closure when the wall-time budget is spent: L-BFGS has no other way out."""


class Descent:
    """One optimisation of the pixels: the loss history and the image with the lowest loss evaluated so far.

    L-BFGS runs torch's strong-Wolfe line search on the loss in units of its first value: with real VGG19
    weights the raw loss is ~1e8, and plain L-BFGS (lr 1, no line search, as neural-style) failed its
    absolute curvature test (s·y > 1e-10), took a raw gradient step and stalled. Every line-search trial
    counts as an evaluation, from the same budget.

    Adam gets each step's gradient scaled to a mean magnitude of 1 and a step that falls along a half
    cosine to ``ADAM_FINAL_FRACTION`` of ``learning_rate`` as the budget (iterations or time, whichever is
    nearer its end) is spent. Plain Adam's second moment (β₂ = 0.999, a memory of ~1000 steps) remembers
    the first gradients, 10–50× larger than late ones, so its real step shrinks on its own and its best
    loss lay flat for minutes (``reports/quality-512-cpu.md``); in the same 300 s ours ended at 1.86e6 against
    plain Adam's 2.44e6 (``reports/quality-512-amd.md``).

    ``deadline`` (``clock`` units) ends the run before an evaluation that the last one's duration says would
    end past it; the first evaluation always runs, and the second unless the deadline has passed (the first
    carries one-off costs, such as a session's first run at a new size, and predicts nothing).
    """

    def __init__(
        self,
        evaluate: Evaluate,
        start: torch.Tensor,
        *,
        optimizer: OptimizerName = "lbfgs",
        iterations: int,
        learning_rate: float = LEARNING_RATE,
        deadline: float | None = None,
        on_evaluation: OnEvaluation | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.evaluate = evaluate
        self.optimizer = check_optimizer(optimizer)
        self.iterations = iterations
        self.learning_rate = learning_rate
        self.deadline = deadline
        self.on_evaluation = on_evaluation
        self.clock = clock
        self.pixels = start.detach().clone().requires_grad_(True)
        self.best = self.pixels.detach().clone()
        self.best_loss = math.inf
        self.losses: list[float] = []
        self.last_terms: LossTerms | None = None
        self.ended_by: Literal["iterations", "time"] = "iterations"
        self.started = clock()
        self._last_seconds = 0.0

    def improved(self) -> bool:
        """Whether the best image is better than the start: the only image worth writing over anything."""
        return bool(self.losses) and self.best_loss < self.losses[0]

    def progress(self) -> float:
        """How much of the budget is spent, 0 to 1: iterations or time, whichever is nearer its end."""
        done = len(self.losses) / self.iterations
        if self.deadline is not None and self.deadline > self.started:
            done = max(done, (self.clock() - self.started) / (self.deadline - self.started))
        return done

    def _evaluate(self) -> float:
        """One loss+gradient at the current pixels; fills ``.grad`` and returns the loss."""
        now = self.clock()
        if self.deadline is not None and self.losses and now + (self._last_seconds if len(self.losses) > 1 else 0.0) > self.deadline:
            raise OutOfTime
        terms, grad = self.evaluate(self.pixels.detach())
        self._last_seconds = self.clock() - now
        if not math.isfinite(terms.total) or not bool(torch.isfinite(grad).all()):
            raise NumericalError(f"loss became {terms.total} at evaluation {len(self.losses) + 1}")
        if terms.total < self.best_loss:
            self.best.copy_(self.pixels.detach())
            self.best_loss = terms.total
        self.losses.append(terms.total)
        self.last_terms = terms
        if self.on_evaluation is not None:
            self.on_evaluation(len(self.losses), terms, self.pixels.detach())
        if self.optimizer == "lbfgs":
            scale = max(abs(self.losses[0]), 1e-30)
        elif self.optimizer == "adam":
            scale = max(float(grad.abs().mean()), 1e-30)
        else:
            scale = 1.0
        self.pixels.grad = grad.to(self.pixels.dtype) / scale
        return terms.total / (scale if self.optimizer == "lbfgs" else 1.0)

    def run(self) -> None:
        """Spend the budget. Ends quietly by iterations or time (``ended_by``); NaN raises NumericalError, and
        Ctrl-C passes through, both with the best image so far kept in ``best``."""
        try:
            if self.optimizer == "lbfgs":
                lbfgs = torch.optim.LBFGS(
                    [self.pixels], lr=1.0, max_iter=self.iterations, max_eval=self.iterations, tolerance_grad=-1.0,
                    tolerance_change=-1.0, history_size=100, line_search_fn="strong_wolfe",
                )
                lbfgs.step(lambda: torch.tensor(self._evaluate()))
            else:
                adam = torch.optim.Adam([self.pixels], lr=self.learning_rate)
                for _ in range(self.iterations):
                    if self.optimizer == "adam":
                        adam.param_groups[0]["lr"] = self.learning_rate * cosine_factor(self.progress())
                    adam.zero_grad(set_to_none=True)
                    self._evaluate()
                    adam.step()
        except OutOfTime:
            self.ended_by = "time"
