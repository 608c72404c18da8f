"""Time to quality: how soon does each way of running the loop reach a good image?

Iterations per minute (``bench``) do not say whether bf16, L-BFGS against Adam, or a faster runner is worth
it: an iteration of one may buy less than an iteration of another. Here every configuration runs the same
problem (the built-in images at one size, the same start, real weights) for the same wall time, each in a
worker process of its own, and keeps snapshots of its best image as time passes. Afterwards every snapshot
is scored with one common yardstick, the fp32 torch loss of that image (same targets, same weights), and
the report gives the seconds each configuration needed to come within 5% and within 1% of the best final
yardstick loss any of them reached.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import torch

from onnxstyle.bench import LEARNING_RATE, Runner, demo_pair, engine_spec, loss_weights, parse_runner, precision_support
from onnxstyle.errors import OnnxstyleError, UsageError
from onnxstyle.files import write_all

SCHEMA = "onnxstyle.quality"
SCHEMA_VERSION = 1
BANDS = (0.05, 0.01)
SNAPSHOTS = 40  # per run, evenly spread over its wall time
DEFAULT_CONFIGS = "cpu:fp32:lbfgs,torch:fp32:lbfgs,torch:bf16:lbfgs,cpu:fp32:adam,torch:bf16:adam,eager:fp32:adam"


@dataclass(frozen=True)
class QualityConfig:
    """One way of running the loop: a runner, a precision and an optimiser (the eager loop is Adam only)."""

    runner: Runner
    precision: str = "fp32"
    optimizer: str = "lbfgs"

    @property
    def label(self) -> str:
        return f"{self.runner.label} {self.precision} {self.optimizer}"


def parse_configs(text: str) -> list[QualityConfig]:
    """``cpu:fp32:lbfgs,torch:bf16:adam,eager:fp32:adam`` → configurations (precision and optimiser optional)."""
    configs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise UsageError(f"empty configuration in --configs '{text}'; use RUNNER[:PRECISION[:OPTIMIZER]]")
        runner_name, _, rest = item.partition(":")
        precision, _, optimizer = rest.partition(":")
        runner = parse_runner(runner_name)
        optimizer = optimizer or ("adam" if runner.engine == "eager" else "lbfgs")
        if optimizer not in ("lbfgs", "adam"):
            raise UsageError(f"unknown optimizer '{optimizer}' in --configs; use lbfgs or adam")
        if runner.engine == "eager" and optimizer != "adam":
            raise UsageError("the eager loop is the plain Adam loop a user would write; give eager:PRECISION:adam")
        configs.append(QualityConfig(runner, precision or "fp32", optimizer))
    return list(dict.fromkeys(configs))


class _OutOfTime(Exception):
    """Raised inside the optimiser's closure when the wall-time budget is spent."""


def run_config(config: QualityConfig, size: int, seconds: float, weights: str, threads: int, seed: int = 0) -> dict[str, Any]:
    """In a worker: set up, then optimise for ``seconds`` of wall time, keeping the best image every so often.

    Returns the set-up time and the snapshots as (seconds, evaluations, the runner's own loss, image as fp16).
    The best image, not the last evaluated one, is what a user would keep: L-BFGS's line search evaluates
    trial points that can be far worse.
    """
    from onnxstyle.engines import create_engine
    from onnxstyle.engines.eager import EagerLoop
    from onnxstyle.weights import resolve

    started = time.perf_counter()
    spec = engine_spec(_backbone(), resolve(weights, _backbone()))
    content, style = demo_pair(size, size)
    start = (torch.randn(content.shape, generator=torch.Generator().manual_seed(seed)) * 0.1 + 0.5).clamp(0, 1)
    targets_weights = loss_weights(spec.backbone)
    if config.runner.engine == "eager":
        loop = EagerLoop(spec, content, style, targets_weights, device=config.runner.target, threads=threads, learning_rate=LEARNING_RATE, start=start, precision=config.precision)
        evaluate: Callable[[torch.Tensor], tuple[float, torch.Tensor]] | None = None
        pixels = loop.pixels
    else:
        engine = create_engine(config.runner.engine, spec, provider=config.runner.target, threads=threads, sizes=[(size, size)], precision=config.precision)
        engine.set_targets(engine.build_targets(content, [style], [1.0], targets_weights))

        def evaluate(image: torch.Tensor) -> tuple[float, torch.Tensor]:
            terms, grad = engine.loss_and_grad(image)
            return terms.total, grad

        pixels = start.clone().to(engine.device).requires_grad_(True)
    setup_seconds = time.perf_counter() - started
    snapshots: list[tuple[float, int, float, torch.Tensor]] = []
    best = {"loss": math.inf, "image": start.clone()}
    count = {"evaluations": 0}
    clock = time.perf_counter()
    interval = seconds / SNAPSHOTS

    def record(loss: float, image: torch.Tensor) -> None:
        count["evaluations"] += 1
        if math.isfinite(loss) and loss < best["loss"]:
            best["loss"], best["image"] = loss, image.detach().cpu().clone()
        elapsed = time.perf_counter() - clock
        if not snapshots or elapsed >= (len(snapshots)) * interval:
            snapshots.append((elapsed, count["evaluations"], best["loss"], best["image"].half()))

    try:
        if evaluate is None:
            while time.perf_counter() - clock < seconds:
                image = loop.pixels.detach().clone()  # the image whose loss this step computes, before Adam moves it
                record(loop.step(), image)
        elif config.optimizer == "adam":
            adam = torch.optim.Adam([pixels], lr=LEARNING_RATE)
            while time.perf_counter() - clock < seconds:
                adam.zero_grad(set_to_none=True)
                loss, grad = evaluate(pixels.detach())
                record(loss, pixels.detach())
                pixels.grad = grad.to(pixels.dtype)
                adam.step()
        else:
            scale: list[float] = []

            def closure() -> torch.Tensor:
                if time.perf_counter() - clock >= seconds:
                    raise _OutOfTime
                loss, grad = evaluate(pixels.detach())
                record(loss, pixels.detach())
                scale.append(scale[0] if scale else max(abs(loss), 1e-30))  # as stylize: L-BFGS in units of the first loss
                pixels.grad = grad.to(pixels.dtype) / scale[0]
                return torch.tensor(loss / scale[0])

            lbfgs = torch.optim.LBFGS(
                [pixels], lr=1.0, max_iter=10**9, max_eval=10**9, tolerance_grad=-1.0, tolerance_change=-1.0, history_size=100,
                line_search_fn="strong_wolfe",
            )
            lbfgs.step(closure)
    except _OutOfTime:
        pass
    total = time.perf_counter() - clock
    if count["evaluations"] == 0 or not math.isfinite(best["loss"]):
        raise UsageError(f"{config.label} at {size} px: the run of {seconds:g} s is shorter than one iteration; give more --seconds")
    snapshots.append((total, count["evaluations"], best["loss"], best["image"].half()))
    return {"setup_seconds": setup_seconds, "seconds": total, "evaluations": count["evaluations"], "snapshots": snapshots}


def score(size: int, weights: str, images: Sequence[torch.Tensor], threads: int) -> list[float]:
    """In a worker: the yardstick — the fp32 torch loss of each image, against the same targets."""
    from onnxstyle.engines.torch_engine import TorchEngine
    from onnxstyle.losses import objective
    from onnxstyle.weights import resolve

    spec = engine_spec(_backbone(), resolve(weights, _backbone()))
    content, style = demo_pair(size, size)
    engine = TorchEngine(spec, "cpu", threads=threads)
    engine.set_targets(engine.build_targets(content, [style], [1.0], loss_weights(spec.backbone)))
    assert engine.targets is not None
    losses = []
    with torch.no_grad():
        for image in images:
            model_input = spec.weights.preprocessing.to_model(image.float())
            total, *_ = objective(engine.features(model_input), model_input, engine.targets.content, engine.targets.style, engine.targets.weights)
            losses.append(float(total))
    return losses


def _backbone() -> Any:
    from onnxstyle.backbones import get_backbone

    return get_backbone("vgg19")


@dataclass
class QualityRun:
    """One configuration at one size: its snapshots scored by the yardstick, and the seconds to each band."""

    config: str
    size: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    setup_seconds: float | None = None
    seconds: float | None = None
    evaluations: int | None = None
    times: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    own_losses: list[float] = field(default_factory=list)
    yardstick: list[float] = field(default_factory=list)
    to_band: dict[str, float | None] = field(default_factory=dict)  # "5%" → seconds, or None when never reached

    @property
    def final(self) -> float | None:
        return self.yardstick[-1] if self.yardstick else None


@dataclass
class QualityReport:
    runs: list[QualityRun]
    options: dict[str, Any]
    system: dict[str, Any]
    weights: str
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": self.created, "options": self.options,
            "system": self.system, "weights": self.weights, "runs": [asdict(run) for run in self.runs],
        }

    def sizes(self) -> list[int]:
        return sorted({run.size for run in self.runs})


def band_times(runs: Sequence[QualityRun]) -> None:
    """Per size: the best final yardstick loss of any run, and when each run first came within each band of it."""
    for size in {run.size for run in runs}:
        scored = [run for run in runs if run.size == size and run.status == "ok" and run.yardstick]
        if not scored:
            continue
        best = min(min(run.yardstick) for run in scored)
        for run in scored:
            for band in BANDS:
                reached = next((time for time, loss in zip(run.times, run.yardstick, strict=True) if loss <= best * (1 + band)), None)
                run.to_band[f"{100 * band:g}%"] = reached


def speedup_to_band(report: QualityReport, run: QualityRun, band: str = "5%") -> tuple[float, bool] | None:
    """How many times sooner than the plain eager fp32 loop ``run`` reached ``band`` (same size), and whether
    that is only a lower bound (the eager loop never got there: its whole run time is taken as its time)."""
    reference = next((other for other in report.runs if other.size == run.size and other.config.startswith("eager-cpu fp32")), None)
    own = run.to_band.get(band)
    if reference is None or reference is run or own is None or reference.status != "ok" or not own > 0:
        return None
    theirs = reference.to_band.get(band)
    if theirs is None:
        return (reference.seconds or 0.0) / own, True
    return theirs / own, False


def table_rows(report: QualityReport) -> list[list[str]]:
    rows = []
    for run in sorted(report.runs, key=lambda item: (item.size, item.config)):
        if run.status != "ok":
            rows.append([f"{run.size} px", run.config, f"{run.status}: {run.reason}", *["–"] * 6])
            continue
        ratio = speedup_to_band(report, run)
        rows.append([
            f"{run.size} px", run.config, f"{run.evaluations:,}", f"{60 * (run.evaluations or 0) / (run.seconds or 1):,.0f}",
            f"{run.final:.4g}", *(_seconds(run.to_band.get(f"{100 * band:g}%")) for band in BANDS),
            "–" if ratio is None else f"{'> ' if ratio[1] else ''}{ratio[0]:.2f}×", f"{run.setup_seconds:.1f}",
        ])
    return rows


COLUMNS = ("size", "configuration", "evaluations", "eval/min", "final loss", "s to 5%", "s to 1%", "×eager (5%)", "setup s")


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def to_markdown(report: QualityReport) -> str:
    lines = [f"# onnxstyle converge — {report.created}", "", "```", " ".join(report.options.get("command", [])), "```", ""]
    lines += [
        f"- machine: {report.system.get('cpu', '?')}, {report.system.get('cpu_affinity', '?')} CPUs, torch {report.system.get('torch', '?')}, {report.system.get('onnxruntime', '?')}",
        f"- weights: {report.weights}",
        f"- method: each configuration alone in a worker for the same wall time per size ({', '.join(f'{size} px: {value:g} s' for size, value in report.options.get('seconds', {}).items())}) from the same random start "
        "(seed 0); its best image snapshotted as time passes; every snapshot scored by the fp32 torch loss (same targets, same weights); "
        "bands relative to the best final loss of any configuration at that size",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += [
        "",
        "×eager (5%): how many times sooner than the plain eager fp32 Adam loop the configuration came within 5% of the best final "
        "loss; \"> N×\" where the eager loop did not get there within its run (its whole run time taken as its time).",
        "",
    ]
    return "\n".join(lines)


def plot(report: QualityReport, out: BinaryIO) -> None:
    """Yardstick loss against wall time, one line per configuration, one panel per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report.sizes()
    figure, axes = plt.subplots(1, max(1, len(sizes)), figsize=(6.5 * max(1, len(sizes)), 4.5), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=False):
        for run in (run for run in report.runs if run.size == size and run.yardstick):
            axis.plot(run.times, run.yardstick, label=run.config, marker=".", markersize=3)
        axis.set_yscale("log")
        axis.set_xlabel("seconds of wall time (after set-up)")
        axis.set_ylabel("fp32 torch loss of the best image so far")
        axis.set_title(f"VGG19 at {size} px")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"onnxstyle converge — {report.system.get('cpu', '')}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110, format="png")
    plt.close(figure)


def write(report: QualityReport, directory: Path, stem: str) -> dict[str, Path]:
    """JSON, Markdown and PNG, written together (``files.write_all``)."""
    from onnxstyle.report import check_directory, check_stem

    check_directory(directory)
    check_stem(stem)
    paths = {suffix: directory / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}
    files: dict[Path, Any] = {paths["json"]: json.dumps(report.to_json(), indent=1) + "\n", paths["md"]: to_markdown(report)}
    if any(run.yardstick for run in report.runs):
        files[paths["png"]] = partial(plot, report)
    else:
        del paths["png"]
    write_all(files)
    return paths


def converge(
    *,
    configs: Sequence[QualityConfig],
    sizes: Sequence[int],
    seconds: Sequence[float],
    weights: str = "auto",
    threads: int | None = None,
    hang_seconds: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> QualityReport:
    """Run every configuration at every size (each in its own worker, one at a time), then score the snapshots.

    ``seconds`` is the wall time per configuration: one value for every size, or one per size.
    """
    import shutil
    import tempfile

    from onnxstyle.bench import CELL_ERRORS, open_worker, worker_environment
    from onnxstyle.sysinfo import default_threads, fingerprint
    from onnxstyle.weights import resolve

    if not configs or not sizes:
        raise UsageError("give at least one configuration and one size")
    budgets = list(seconds) * len(sizes) if len(seconds) == 1 else list(seconds)
    if len(budgets) != len(sizes) or not all(math.isfinite(value) and value > 0 for value in budgets):
        raise UsageError(f"--seconds needs one positive number, or one per size ({len(sizes)}), got {', '.join(map(str, seconds))}")
    threads = min(threads or default_threads(), default_threads())
    label = resolve(weights, _backbone()).label
    say = progress or (lambda _text: None)
    runs: list[QualityRun] = []
    images: dict[int, list[torch.Tensor]] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="onnxstyle-quality-"))
    try:
        for size, budget in zip(sizes, budgets, strict=True):
            for config in configs:
                run = QualityRun(config.label, size)
                runs.append(run)
                unsupported = precision_support(config.runner, config.precision)
                if unsupported:
                    run.status, run.reason = "skipped", unsupported
                    continue
                say(f"{config.label} at {size} px for {budget:g} s")
                worker = open_worker(f"quality-{config.runner.label}-{size}", worker_environment(config.runner, threads, {}), log_dir)
                try:
                    result = worker.run(
                        "onnxstyle.quality:run_config", hang_seconds + 2 * budget, config=config, size=size, seconds=budget,
                        weights=weights, threads=threads,
                    )
                except CELL_ERRORS as error:
                    from onnxstyle.providers import first_line

                    run.status, run.reason = "failed", first_line(error)
                    continue
                finally:
                    worker.close()
                run.setup_seconds, run.seconds, run.evaluations = result["setup_seconds"], result["seconds"], result["evaluations"]
                for time_point, evaluation, own, image in result["snapshots"]:
                    run.times.append(time_point)
                    run.iterations.append(evaluation)
                    run.own_losses.append(own)
                    images.setdefault(size, []).append(image)
        for size in sizes:
            if not images.get(size):
                continue
            say(f"scoring {len(images[size])} snapshots at {size} px with the fp32 torch loss")
            worker = open_worker(f"quality-score-{size}", worker_environment(Runner("torch", "cpu"), threads, {}), log_dir)
            try:
                losses = iter(worker.run("onnxstyle.quality:score", hang_seconds + 10 * len(images[size]), size=size, weights=weights, images=images[size], threads=threads))
            finally:
                worker.close()
            for run in (run for run in runs if run.size == size and run.times):
                run.yardstick = [next(losses) for _ in run.times]
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    band_times(runs)
    options = {"seconds": dict(zip(map(str, sizes), budgets, strict=True)), "sizes": list(sizes), "configs": [config.label for config in configs], "threads": threads}
    report = QualityReport(runs, options, fingerprint(), label)
    report.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not any(run.status == "ok" for run in runs):
        first = next((run for run in runs if run.reason), None)
        raise OnnxstyleError(f"no configuration was measured: {first.config} at {first.size} px: {first.reason}" if first else "no configuration was measured")
    return report

