"""Every gradient check in one place: a runner's loss and gradient against torch autograd (CPU, fp32), with the same
targets, on the same image, by one error formula.

The bench checks each runner on a small problem (``check_gradient``), ``parity`` at the sizes people run, and
``providers --check`` each provider on NIN with synthetic weights (adding float64 as a yardstick for TF32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from onnxstyle.defaults import CHECK_SIZE
from onnxstyle.engines import EngineSpec, Targets, create_engine
from onnxstyle.engines.eager import EagerLoop
from onnxstyle.engines.torch_engine import TorchEngine
from onnxstyle.exporters.validation import relative_error
from onnxstyle.images import demo_pair
from onnxstyle.losses import gram_matrix, objective
from onnxstyle.precision import GRADIENT_TOLERANCES, LOSS_TOLERANCES
from onnxstyle.runners import Runner
from onnxstyle.weights import build_backbone


@dataclass(frozen=True)
class GradientReference:
    """The answer every runner is checked against, and the fp32 targets it was computed with (which runners reuse)."""

    targets: Targets
    loss: float
    grad: np.ndarray


def check_side(spec: EngineSpec) -> int:
    """Side of the small check problem: ``CHECK_SIZE``, or the least the model's layers can run if that is larger."""
    return max(CHECK_SIZE, spec.backbone.min_size(spec.layers))


def gradient_check_images(width: int, height: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, style, image) of the gradient checks, square unless ``height`` is given: the demo pair, and a point between them."""
    content, style = demo_pair(width, width if height is None else height)
    return content, style, (content * 0.8 + style * 0.2).clamp(0, 1)


def reference_gradient(
    spec: EngineSpec, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor, threads: int | None
) -> GradientReference:
    """Torch autograd on the CPU in fp32: what every runner is checked against."""
    reference = TorchEngine(spec, "cpu", threads=threads)
    targets = reference.build_targets(content, [style], [1.0], spec.loss_weights())
    reference.set_targets(targets)
    terms, grad = reference.loss_and_grad(image)
    return GradientReference(targets, terms.total, grad.numpy())


def float64_gradient(spec: EngineSpec, content: torch.Tensor, style: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """The same loss's gradient computed in float64 on the CPU: the yardstick for fp32 against TF32."""
    model = build_backbone(spec.backbone, spec.layers, pooling=spec.pooling, resolved=spec.weights).double()
    model.requires_grad_(False)
    to_model = spec.weights.preprocessing.to_model
    with torch.no_grad():
        content_features = model(to_model(content.double()))
        style_features = model(to_model(style.double()))
    content_targets = {layer: content_features[layer] for layer in spec.content_layers}
    style_targets = {layer: gram_matrix(style_features[layer]) for layer in spec.style_layers}
    pixels = image.double().requires_grad_(True)
    model_input = to_model(pixels)
    total, _, _, _ = objective(model(model_input), model_input, content_targets, style_targets, spec.loss_weights())
    total.backward()
    assert pixels.grad is not None
    return pixels.grad.numpy()


def errors_against(reference: GradientReference, loss: float, grad: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(loss error, gradient error) of one answer: ``relative_error`` for both, so every check reads the same way."""
    answer = grad.detach().cpu().numpy() if isinstance(grad, torch.Tensor) else grad
    return relative_error(np.asarray(loss), np.asarray(reference.loss)), relative_error(answer, reference.grad)


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


def check_gradient(runner: Runner, spec: EngineSpec, threads: int | None, precision: str = "fp32") -> dict[str, object]:
    """Loss and gradient of ``runner`` at ``precision`` against torch autograd (CPU, fp32) on the same small problem.

    A bench worker runs it by name (``onnxstyle.gradient_checks:check_gradient``), in the cell's own process."""
    side = check_side(spec)
    content, style, image = gradient_check_images(side)
    reference = reference_gradient(spec, content, style, image, threads)
    loss, grad = runner_loss_and_grad(runner, spec, reference.targets, content, style, image, threads, precision)
    loss_error, grad_error = errors_against(reference, loss, grad)
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
