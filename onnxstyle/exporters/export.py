"""Export the feature extractor and the loss+gradient graph, each validated against torch.

``export_backbone`` is the one library entry point; ``onnxstyle export`` is a thin layer over it. The graphs are
built in ``models``, checked against the torch ``reference`` by ``validation``, and written here, all together.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import torch

from onnxstyle import __version__
from onnxstyle.backbones import Pooling, get_backbone, parse_layers
from onnxstyle.errors import OutputError, UsageError
from onnxstyle.exporters.graph import (
    DEFAULT_OPSET,
    HEIGHT,
    IMAGE_INPUT,
    WIDTH,
)
from onnxstyle.exporters.models import LOSS_OUTPUTS, build_features_model, build_loss_model, check_opset, operator_types
from onnxstyle.exporters.validation import VALIDATION_SIZES, validate_features, validate_loss
from onnxstyle.files import check_output, write_all
from onnxstyle.precision import EXPORT_TOLERANCES
from onnxstyle.weights import ResolvedWeights, build_backbone, resolve


@dataclass
class ExportResult:
    """The three files an export wrote, and what their validation found (the same facts as the metadata sidecar)."""

    features_path: Path
    loss_path: Path
    metadata_path: Path
    metadata: dict[str, object] = field(default_factory=dict)
    worst_errors: dict[str, float] = field(default_factory=dict)  # graph ("features", "loss") → worst relative error
    tolerance: float = 0.0
    timing_only: bool = False


def default_stem(backbone: str, pooling: str, weights: ResolvedWeights, content: Sequence[str], style: Sequence[str], features: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([list(content), list(style), list(features)]).encode()).hexdigest()[:8]
    return f"{backbone}-{pooling}-{weights.id.replace(':', '_')}-{digest}"


def export_backbone(
    *,
    backbone: str,
    weights: str = "auto",
    layers: str | Sequence[str] | None = None,
    content_layers: str | Sequence[str] | None = None,
    style_layers: str | Sequence[str] | None = None,
    pooling: Pooling = "max",
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    output: Path | None = None,
    models_dir: Path = Path("models"),
    validation_sizes: Sequence[tuple[int, int]] = VALIDATION_SIZES,
    force: bool = False,
    on_plan: Callable[[list[Path]], None] | None = None,
) -> ExportResult:
    """Write the features model, the loss+gradient model and a metadata sidecar, all validated.

    ``precision="fp16"`` runs the network and its adjoint in fp16 inside the graphs; inputs, outputs,
    Grams and loss sums stay fp32 (see ``NetworkGraph``).

    The three paths are decided and checked before any work (``on_plan`` hears them): an explicit
    ``output`` whose files already exist is refused unless ``force``, since ``-o dir/data.onnx`` also
    writes ``dir/data.loss.onnx`` and ``dir/data.json``; the default store's files are named by their
    configuration and are replaced. All three are written together or not at all.
    """
    check_opset(opset)
    if precision not in EXPORT_TOLERANCES:
        raise UsageError(f"graphs are exported in {' or '.join(EXPORT_TOLERANCES)}, not {precision} (bf16 Conv needs opset 22)")
    tolerance = EXPORT_TOLERANCES[precision]
    spec = get_backbone(backbone)
    content = spec.validate_layers(parse_layers(content_layers, spec.default_content_layers), "content-layers")
    style = spec.validate_layers(parse_layers(style_layers, spec.default_style_layers), "style-layers")
    feature_layers = spec.validate_layers(parse_layers(layers, list(dict.fromkeys([*style, *content]))), "layers")
    started = time.perf_counter()
    resolved = resolve(weights, spec)
    if output is None:
        models_dir.mkdir(parents=True, exist_ok=True)
        stem = default_stem(spec.name, pooling, resolved, content, style, feature_layers) + ("" if precision == "fp32" else f"-{precision}")
        output, replace = models_dir / f"{stem}.features.onnx", True
    else:
        output, replace = Path(output), force
    paths = export_paths(output)
    for path in paths:
        check_output(path, formats=(".onnx",) if path.suffix == ".onnx" else None, replace=replace, what="export")
    if on_plan is not None:
        on_plan(list(paths))
    output, loss_path, metadata_path = paths
    features_model = build_backbone(spec, feature_layers, pooling=pooling, resolved=resolved)
    features_graph = build_features_model(features_model, resolved.preprocessing, opset=opset, precision=precision)
    onnx.checker.check_model(features_graph, full_check=True)
    records = validate_features(features_graph, features_model, resolved.preprocessing, validation_sizes, tolerance)
    loss_model = build_backbone(spec, list(dict.fromkeys([*content, *style])), pooling=pooling, resolved=resolved)
    loss_graph = build_loss_model(
        loss_model, resolved.preprocessing, content_layers=content, style_layers=style, opset=opset, precision=precision
    )
    onnx.checker.check_model(loss_graph, full_check=True)
    records += validate_loss(loss_graph, loss_model, resolved.preprocessing, content, style, validation_sizes, tolerance=tolerance)
    metadata: dict[str, object] = {
        "tool": "onnxstyle",
        "tool_version": __version__,
        "backbone": spec.name,
        "pooling": pooling,
        "opset": opset,
        "precision": precision,
        "features": {"file": output.name, "layers": feature_layers, "inputs": [IMAGE_INPUT], "dynamic_axes": [HEIGHT, WIDTH]},
        "loss": {"file": loss_path.name, "content_layers": content, "style_layers": style, "outputs": list(LOSS_OUTPUTS), "operators": sorted(operator_types(loss_graph))},
        "weights": resolved.as_dict(),
        "preprocessing_in_graph": True,
        "input": "RGB float32 in [0, 1], shape (1, 3, height, width)",
        "validation": {"reference": f"torch {torch.__version__}", "feature_tolerance": tolerance, "gradient_tolerance": tolerance, "records": [asdict(record) for record in records]},
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    worst = {graph: max((record.error for record in records if record.graph == graph), default=0.0) for graph in ("features", "loss")}
    write_all({output: features_graph.SerializeToString(), loss_path: loss_graph.SerializeToString(), metadata_path: json.dumps(metadata, indent=2) + "\n"})
    return ExportResult(output, loss_path, metadata_path, metadata, worst, tolerance, resolved.weight_set.synthetic)


def export_paths(output: Path) -> tuple[Path, Path, Path]:
    """The features model, loss model and metadata an export to ``output`` writes (``x.onnx``: x.loss.onnx, x.json)."""
    if output.suffix != ".onnx":
        raise OutputError(f"{output}: the output must end in .onnx")
    base = output.name.removesuffix(".onnx").removesuffix(".features")
    return output, output.with_name(base + ".loss.onnx"), output.with_name(base + ".json")
