"""Gradient parity between runners at real sizes: does ORT on the GPU compute what torch computes on the CPU?

The bench's own check runs at 64 px, where every runner agrees; cuDNN's algorithm choice, TF32 and
fp16 show at the sizes people run. Every runner gets the same fp32 targets and the same image, and is
compared with torch autograd on the CPU in fp32 (the reference implementation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from onnxstyle.backbones import BackboneSpec
from onnxstyle.errors import OnnxstyleError, ProviderError, UsageError, first_line
from onnxstyle.report.parity import ParityRow
from onnxstyle.runners import Runner
from onnxstyle.weights import resolve


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

    from onnxstyle import gradient_checks  # torch: loaded to compute rows, not to read a report
    from onnxstyle.engines import EngineSpec
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
            content, style, image = gradient_checks.gradient_check_images(width, height)
            reference = gradient_checks.reference_gradient(spec, content, style, image, threads)
            for runner in plan.runners:
                row = ParityRow(backbone.name, width, height, runner.label, plan.precision)
                if (unsupported := precision_support(runner, plan.precision)) is not None:
                    row.status, row.error = "skipped", unsupported
                    add(row)
                    continue
                started = time.perf_counter()
                try:
                    loss, grad = gradient_checks.runner_loss_and_grad(
                        runner, spec, reference.targets, content, style, image, threads, plan.precision
                    )
                    row.loss_error, row.grad_error = gradient_checks.errors_against(reference, loss, grad)
                except Exception as error:  # ORT's run errors derive from Exception; a failed runner is a row, not a crash
                    row.status, row.error = "failed", first_line(error)
                    row.error_code = error.exit_code if isinstance(error, OnnxstyleError) else ProviderError.exit_code
                row.seconds = time.perf_counter() - started
                add(row)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    return rows
