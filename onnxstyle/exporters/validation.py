"""Parity of every exported graph with torch at several sizes; an export that misses its tolerance is refused."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from onnxstyle.backbones import Backbone
from onnxstyle.errors import ExportValidationError
from onnxstyle.exporters.graph import (
    IMAGE_INPUT,
    POOL_CHOICE,
    POOL_MASK,
    RELU_CHOICE,
)
from onnxstyle.exporters.models import target_feeds
from onnxstyle.exporters.reference import torch_loss_and_grad, with_decisions
from onnxstyle.losses import LossWeights, gram_matrix
from onnxstyle.precision import EXPORT_TOLERANCES
from onnxstyle.weights import Preprocessing

VALIDATION_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (97, 130), (256, 192))


def _with_choice_outputs(graph: onnx.ModelProto) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(graph)
    for node in graph.graph.node:
        for name in node.output:
            if name.startswith((POOL_CHOICE, POOL_MASK, RELU_CHOICE)):
                exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.BOOL, None))
    return exposed


def _stack_choices(named: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    layers: dict[str, list[tuple[int, np.ndarray]]] = {}
    for name, value in named.items():
        layer, index = name.removeprefix(POOL_CHOICE).rsplit(".", 1)
        layers.setdefault(layer, []).append((int(index), value))
    return {layer: torch.from_numpy(np.stack([v for _, v in sorted(items, key=lambda item: item[0])], axis=2)) for layer, items in layers.items()}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖₂ / ‖expected‖₂, the usual vector relative error (scale-free)."""
    actual64, expected64 = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.linalg.norm(expected64)) or 1.0
    return float(np.linalg.norm(actual64 - expected64)) / scale


@dataclass
class ValidationRecord:
    graph: str
    size: tuple[int, int]
    output: str
    error: float
    tolerance: float


def _checked(graph: str, size: tuple[int, int], output: str, actual: np.ndarray, expected: np.ndarray, tolerance: float) -> ValidationRecord:
    """One comparison against torch; beyond tolerance it is a typed error, not a warning."""
    error = relative_error(np.asarray(actual), expected)
    if not error <= tolerance:
        raise ExportValidationError(
            f"exported {graph} graph disagrees with torch at {size[0]}x{size[1]} ({output}): "
            f"relative error {error:.2e} > {tolerance:.0e}"
        )
    return ValidationRecord(graph, size, output, error, tolerance)


def _session(model: onnx.ModelProto) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _validation_images(sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(1, 3, height, width, generator=generator) for width, height in sizes]


def validate_features(
    graph: onnx.ModelProto,
    model: Backbone,
    preprocessing: Preprocessing,
    sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    tolerance: float = EXPORT_TOLERANCES["fp32"],
) -> list[ValidationRecord]:
    """Run ORT and torch on the same images; any output beyond tolerance is a typed error."""
    session = _session(graph)
    records = []
    for image in _validation_images(sizes):
        size = (image.shape[3], image.shape[2])
        with torch.no_grad():
            expected = model(preprocessing.to_model(image))
        actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, {IMAGE_INPUT: image.numpy()}), strict=True))  # type: ignore[attr-defined]
        for layer, reference in expected.items():
            records.append(_checked("features", size, layer, actual[layer], reference.numpy(), tolerance))
    return records


def random_targets(
    model: Backbone, preprocessing: Preprocessing, content_layers: Sequence[str], style_layers: Sequence[str], image: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Targets from a different random image of the same size, so the loss is far from zero."""
    generator = torch.Generator().manual_seed(11)
    other = torch.rand(image.shape, generator=generator)
    with torch.no_grad():
        features = model(preprocessing.to_model(other))
    return (
        {layer: features[layer] for layer in content_layers},
        {layer: gram_matrix(features[layer]) for layer in style_layers},
    )


def loss_feeds(
    image: np.ndarray, content_targets: dict[str, torch.Tensor], style_targets: dict[str, torch.Tensor], weights: LossWeights
) -> dict[str, np.ndarray]:
    return {IMAGE_INPUT: image, **{name: value.numpy() for name, value in target_feeds(content_targets, style_targets, weights).items()}}


def validate_loss(
    graph: onnx.ModelProto,
    model: Backbone,
    preprocessing: Preprocessing,
    content_layers: Sequence[str],
    style_layers: Sequence[str],
    sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    weights: LossWeights | None = None,
    tolerance: float = EXPORT_TOLERANCES["fp32"],
) -> list[ValidationRecord]:
    """Gradient parity against torch.autograd at every size (relative error ≤ 1e-4 for fp32 graphs)."""
    weights = weights or LossWeights.neural_style(len(content_layers), len(style_layers))
    session = _session(_with_choice_outputs(graph))
    names = [output.name for output in session.get_outputs()]  # type: ignore[attr-defined]
    records = []
    for image in _validation_images(sizes):
        size = (image.shape[3], image.shape[2])
        content_targets, style_targets = random_targets(model, preprocessing, content_layers, style_layers, image)
        outputs = dict(zip(names, session.run(None, loss_feeds(image.numpy(), content_targets, style_targets, weights)), strict=True))  # type: ignore[attr-defined]
        choices = _stack_choices({name: value for name, value in outputs.items() if name.startswith(POOL_CHOICE)})
        masks = {name.removeprefix(RELU_CHOICE): torch.from_numpy(value) for name, value in outputs.items() if name.startswith(RELU_CHOICE)}
        pool_masks = {name.removeprefix(POOL_MASK): torch.from_numpy(value) for name, value in outputs.items() if name.startswith(POOL_MASK)}
        reference = with_decisions(model, choices, masks, pool_masks)
        loss, grad = torch_loss_and_grad(reference, preprocessing, image, content_targets, style_targets, weights)
        for name, expected in (("loss", loss), ("grad", grad)):
            records.append(_checked("loss", size, name, outputs[name], expected.numpy(), tolerance))
    return records
