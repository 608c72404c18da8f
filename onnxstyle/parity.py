"""Gradient parity between runners at real sizes: does ORT on the GPU compute what torch computes on the CPU?

The bench's own check runs at 64 px, where every runner agrees; cuDNN's algorithm choice, TF32 and
fp16 show at the sizes people run. Every runner gets the same fp32 targets and the same image, and is
compared with torch autograd on the CPU in fp32 (the reference implementation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxstyle.backbones import BackboneSpec
from onnxstyle.errors import OnnxstyleError, ProviderError, UsageError, first_line
from onnxstyle.report.formats import FileContent
from onnxstyle.runners import Runner
from onnxstyle.weights import resolve


@dataclass
class ParityRow:
    """One runner at one model and size: its errors against the reference, or why it has none."""

    model: str
    width: int
    height: int
    runner: str
    precision: str
    status: str = "ok"  # ok | failed | skipped
    loss_error: float | None = None
    grad_error: float | None = None
    seconds: float | None = None
    error: str = ""  # why the row failed or was skipped
    error_code: int | None = None  # the exit code of the failure's error class

    @property
    def reason(self) -> str:
        """``error`` by the name bench cells use, so the bench's "nothing measured" rule reads rows too."""
        return self.error


@dataclass(frozen=True)
class ParityPlan:
    """What a parity run is asked to do, every option checked before the reference is computed."""

    runners: list[Runner]
    models: list[BackboneSpec]
    sizes: list[tuple[int, int]]  # (width, height)
    precision: str = "fp32"
    skipped: dict[Runner, str] = field(default_factory=dict)  # ``all``: runners not usable here, with why


def parity_plan(*, provider: str, model: str, sizes: str, precision: str, threads: int | None = None) -> ParityPlan:
    """Parse and check as ``bench`` does: an unusable runner named, a precision no runner can run, or a size no
    model can run is one line before any work."""
    from onnxstyle.bench.options import check_sizes, check_threads, parse_models, parse_precisions, parse_sizes
    from onnxstyle.runners import check_precisions, select_runners

    models = parse_models(model)
    size_list = parse_sizes(sizes)
    check_sizes(models, size_list)
    precisions = parse_precisions(precision)
    if len(precisions) != 1:
        raise UsageError(f"parity takes one precision, got {precision} (run it once per precision)")
    check_threads(threads)
    runners, skipped = select_runners(provider)
    check_precisions(runners, precisions)
    return ParityPlan(runners, models, size_list, precisions[0], skipped)


def gradient_parity(
    plan: ParityPlan, *, weights: str = "auto", threads: int | None = None, on_row: Callable[[ParityRow], None] | None = None
) -> list[ParityRow]:
    """Each runner's loss and gradient against torch fp32 on the CPU; a runner that fails, or cannot run the
    precision or the size, gets a row saying why."""
    import torch

    from onnxstyle.bench.loops import gradient_check_images, reference_gradient, runner_loss_and_grad
    from onnxstyle.engines import EngineSpec
    from onnxstyle.exporters.validation import relative_error
    from onnxstyle.runners import precision_support

    rows: list[ParityRow] = []

    def add(row: ParityRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for backbone in plan.models:
        spec = EngineSpec.defaults(backbone, resolve(weights, backbone))
        for width, height in plan.sizes:
            for runner, reason in plan.skipped.items():
                add(ParityRow(backbone.name, width, height, runner.label, plan.precision, status="skipped", error=reason))
            if (problem := backbone.size_problem(spec.layers, width, height)) is not None:
                for runner in plan.runners:
                    add(ParityRow(backbone.name, width, height, runner.label, plan.precision, status="skipped", error=problem))
                continue
            content, style, image = gradient_check_images(width, height)
            targets, expected_terms, expected_grad = reference_gradient(spec, content, style, image, threads)
            for runner in plan.runners:
                row = ParityRow(backbone.name, width, height, runner.label, plan.precision)
                if (unsupported := precision_support(runner, plan.precision)) is not None:
                    row.status, row.error = "skipped", unsupported
                    add(row)
                    continue
                started = time.perf_counter()
                try:
                    loss, grad = runner_loss_and_grad(runner, spec, targets, content, style, image, threads, plan.precision)
                    row.loss_error = abs(loss - expected_terms.total) / abs(expected_terms.total)
                    row.grad_error = float(relative_error(grad.detach().cpu().numpy(), expected_grad.numpy()))
                except Exception as error:  # ORT's run errors derive from Exception; a failed runner is a row, not a crash
                    row.status, row.error = "failed", first_line(error)
                    row.error_code = error.exit_code if isinstance(error, OnnxstyleError) else ProviderError.exit_code
                row.seconds = time.perf_counter() - started
                add(row)
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
        if row.status != "ok":
            lines.append(f"| {row.model} | {row.width}x{row.height} | {row.runner} | {row.precision} | {row.status}: {row.error} | – | – |")
        else:
            lines.append(
                f"| {row.model} | {row.width}x{row.height} | {row.runner} | {row.precision} | {row.grad_error:.1e} | {row.loss_error:.1e} | {row.seconds:.1f} |"
            )
    return "\n".join(lines) + "\n"


def parity_files(rows: list[ParityRow], system: dict[str, object]) -> dict[str, FileContent]:
    document = {"kind": "gradient-parity", "reference": "torch autograd, cpu, fp32", "system": system, "rows": [asdict(row) for row in rows]}
    return {"json": json.dumps(document, indent=1) + "\n", "md": parity_markdown(rows, system)}


def measured(rows: list[ParityRow]) -> int:
    """Rows that measured something: what decides whether a report may replace another, and the exit code."""
    return sum(row.status == "ok" for row in rows)


def rows_in(path: Path) -> float:
    """Measured rows an existing parity report holds (unreadable: never replaced)."""
    try:
        return sum(not row.get("error") for row in json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("inf")
