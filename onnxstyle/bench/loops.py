"""The loop under test, built inside a cell's worker: Adam on pixels whose gradient an engine computes,
and the gradient check of each runner against torch autograd."""

from __future__ import annotations

import time
from typing import Protocol

import torch

from onnxstyle.bench.options import CHECK_SIZE, LEARNING_RATE
from onnxstyle.engines import Engine, EngineSpec, Targets, create_engine
from onnxstyle.engines.eager import EagerLoop
from onnxstyle.engines.torch_engine import TorchEngine
from onnxstyle.exporters.validation import relative_error
from onnxstyle.images import demo_pair
from onnxstyle.losses import LossTerms
from onnxstyle.precision import GRADIENT_TOLERANCES, LOSS_TOLERANCES
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


def runner_loss_and_grad(
    runner: Runner, spec: EngineSpec, targets: Targets, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor,
    threads: int | None, precision: str = "fp32",
) -> tuple[float, torch.Tensor]:
    """One runner's loss and gradient at ``image``: our engines with the given targets, eager with its own (built as a user would)."""
    height, width = image.shape[2:]
    if runner.engine == "eager":
        eager = EagerLoop(spec, content, style, targets.weights, device=runner.target, threads=threads, precision=precision)
        return eager.loss_and_grad(image)
    engine = create_engine(runner.engine, spec, provider=runner.target, threads=threads, sizes=[(height, width)], precision=precision)
    engine.set_targets(targets)
    terms, grad = engine.loss_and_grad(image.to(engine.device))
    return terms.total, grad


def gradient_check_images(width: int, height: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, style, image) of the gradient checks, square unless ``height`` is given: the demo pair, and a point between them."""
    content, style = demo_pair(width, width if height is None else height)
    return content, style, (content * 0.8 + style * 0.2).clamp(0, 1)


def reference_gradient(
    spec: EngineSpec, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor, threads: int | None
) -> tuple[Targets, LossTerms, torch.Tensor]:
    """(targets, loss terms, gradient) of torch autograd on the CPU in fp32: what every runner is checked against."""
    reference = TorchEngine(spec, "cpu", threads=threads)
    targets = reference.build_targets(content, [style], [1.0], spec.loss_weights())
    reference.set_targets(targets)
    terms, grad = reference.loss_and_grad(image)
    return targets, terms, grad


def check_gradient(runner: Runner, spec: EngineSpec, threads: int | None, precision: str = "fp32") -> dict[str, object]:
    """Loss and gradient of ``runner`` at ``precision`` against torch autograd (CPU, fp32) on the same small problem."""
    side = max(CHECK_SIZE, spec.backbone.min_size(spec.layers))
    content, style, image = gradient_check_images(side)
    targets, expected_terms, expected_grad = reference_gradient(spec, content, style, image, threads)
    loss, grad = runner_loss_and_grad(runner, spec, targets, content, style, image, threads, precision)
    loss_error = abs(loss - expected_terms.total) / abs(expected_terms.total)
    grad_error = relative_error(grad.detach().cpu().numpy(), expected_grad.numpy())
    return {
        "size": [side, side],
        "precision": precision,
        "reference": "torch autograd, cpu, fp32",
        "loss_error": loss_error,
        "grad_error": grad_error,
        "loss_tolerance": LOSS_TOLERANCES[precision],
        "grad_tolerance": GRADIENT_TOLERANCES[precision],
        "ok": loss_error <= LOSS_TOLERANCES[precision] and grad_error <= GRADIENT_TOLERANCES[precision],
    }
