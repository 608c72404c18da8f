"""The loop under test, built inside a cell's worker: Adam on pixels whose gradient an engine computes.
(The gradient check a worker also runs lives in ``onnxstyle.gradient_checks``.)"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from onnxstyle.defaults import LEARNING_RATE
from onnxstyle.engines import Engine, EngineSpec, create_engine
from onnxstyle.engines.eager import EagerLoop
from onnxstyle.runners import Runner


class Loop(Protocol):
    engine_seconds: float

    def step(self) -> float: ...

    def describe(self) -> dict[str, object]: ...


class EngineLoop:
    """Adam on a leaf tensor whose gradient one of our engines computes (the stylize loop's shape)."""

    def __init__(self, engine: Engine, start: torch.Tensor, learning_rate: float = LEARNING_RATE) -> None:
        self.engine = engine
        self.pixels = start.detach().clone().to(engine.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.pixels], lr=learning_rate)
        self.engine_seconds = 0.0

    def step(self) -> float:
        started = time.perf_counter()
        terms, grad = self.engine.loss_and_grad(self.pixels.detach())
        self.engine_seconds += time.perf_counter() - started
        self.pixels.grad = grad
        self.optimizer.step()
        return terms.total

    def describe(self) -> dict[str, object]:
        return self.engine.describe()


def build_loop(
    runner: Runner,
    spec: EngineSpec,
    content: torch.Tensor,
    style: torch.Tensor,
    threads: int | None,
    precision: str = "fp32",
    tile: int | None = None,
    cuda_graph: bool = False,
) -> Loop:
    """Everything a cell's setup time covers: graphs, sessions, weights on the device, targets."""
    height, width = content.shape[2:]
    weights = spec.loss_weights()
    if runner.engine == "eager":
        return EagerLoop(
            spec, content, style, weights, device=runner.target, threads=threads, learning_rate=LEARNING_RATE, precision=precision
        )
    engine = create_engine(
        runner.engine, spec, provider=runner.target, threads=threads, sizes=[(height, width)], precision=precision, tile=tile,
        cuda_graph=cuda_graph,
    )
    engine.set_targets(engine.build_targets(content, [style], [1.0], weights))
    return EngineLoop(engine, content)

