"""Gradient parity between runners at real sizes: does ORT on the GPU compute what torch computes on the CPU?

The bench's own check runs at 64 px, where every runner agrees; cuDNN's algorithm choice, TF32 and
fp16 show at the sizes people run. Every runner gets the same fp32 targets and the same image, and is
compared with torch autograd on the CPU in fp32 (the reference implementation).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxstyle.backbones import BackboneSpec
from onnxstyle.errors import first_line
from onnxstyle.report.formats import FileContent
from onnxstyle.runners import Runner
from onnxstyle.weights import resolve


@dataclass
class ParityRow:
    model: str
    size: int
    runner: str
    precision: str
    loss_error: float | None = None
    grad_error: float | None = None
    seconds: float | None = None
    error: str = ""


def gradient_parity(
    *, runners: list[Runner], models: list[BackboneSpec], sizes: list[int], precision: str = "fp32", weights: str = "auto",
    threads: int | None = None, on_row: Any = None,
) -> list[ParityRow]:
    """Each runner's loss and gradient against torch fp32 on the CPU; a runner that fails gets its error in its row."""
    import torch

    from onnxstyle.bench.loops import gradient_check_images, reference_gradient, runner_loss_and_grad
    from onnxstyle.engines import EngineSpec
    from onnxstyle.exporters.validation import relative_error

    rows = []
    for backbone in models:
        spec = EngineSpec.defaults(backbone, resolve(weights, backbone))
        for size in sizes:
            side = max(size, backbone.min_size(spec.layers))
            content, style, image = gradient_check_images(side)
            targets, expected_terms, expected_grad = reference_gradient(spec, content, style, image, threads)
            for runner in runners:
                row = ParityRow(backbone.name, side, runner.label, precision)
                started = time.perf_counter()
                try:
                    loss, grad = runner_loss_and_grad(runner, spec, targets, content, style, image, threads, precision)
                    row.loss_error = abs(loss - expected_terms.total) / abs(expected_terms.total)
                    row.grad_error = float(relative_error(grad.detach().cpu().numpy(), expected_grad.numpy()))
                except Exception as error:  # ORT's run errors derive from Exception; a failed runner is a row, not a crash
                    row.error = first_line(error)
                row.seconds = time.perf_counter() - started
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return rows


def parity_markdown(rows: list[ParityRow], system: dict[str, object]) -> str:
    lines = [
        "# Gradient parity against torch autograd (CPU, fp32)",
        "",
        f"{system.get('cpu', '?')}; GPU {system.get('gpu', 'none')}; {system.get('onnxruntime', '?')}; torch {system.get('torch', '?')}",
        "",
        "| model | size | runner | precision | grad rel. error | loss rel. error | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.model} | {row.size} px | {row.runner} | {row.precision} | failed: {row.error} | – | – |")
        else:
            lines.append(
                f"| {row.model} | {row.size} px | {row.runner} | {row.precision} | {row.grad_error:.1e} | {row.loss_error:.1e} | {row.seconds:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parity_files(rows: list[ParityRow], system: dict[str, object]) -> dict[str, FileContent]:
    document = {"kind": "gradient-parity", "reference": "torch autograd, cpu, fp32", "system": system, "rows": [asdict(row) for row in rows]}
    return {"json": json.dumps(document, indent=1) + "\n", "md": parity_markdown(rows, system)}


def rows_in(path: Path) -> float:
    """Rows an existing parity report holds (unreadable: never replaced)."""
    try:
        return len(json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")
