"""Thin Typer app: parse, call the library, render with rich. Errors become one line and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from onnxstyle import __version__, defaults
from onnxstyle.errors import OnnxstyleError, UsageError

app = typer.Typer(
    name="onnxstyle",
    help="Neural style transfer on ONNX Runtime and torch: export, stylize, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
weights_app = typer.Typer(help="The weights catalogue: list, verify, where.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
report_app = typer.Typer(help="Saved bench reports: show, compare.", no_args_is_help=True)
app.add_typer(report_app, name="report")
# Rows no log reader will ever scroll to: piped tables are never squeezed, and COLUMNS cannot narrow them.
UNBOUNDED_WIDTH = 1_000_000


def _console(stderr: bool) -> Console:
    """A console whose messages are never broken into lines: a log line stays greppable and a path stays whole.

    On a terminal, tables fit its width; piped (CI logs, ``| tee``), nothing is wrapped at all, whatever ``COLUMNS`` says.
    """
    stream = sys.stderr if stderr else sys.stdout
    interactive = stream.isatty()
    return Console(stderr=stderr, soft_wrap=True, width=None if interactive else UNBOUNDED_WIDTH)


out = _console(stderr=False)
err = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"onnxstyle {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = None,
    ep_library: Annotated[Optional[list[str]], typer.Option("--ep-library", help="PATH[:NAME] of a plugin execution provider library to register (repeatable; before the command, e.g. onnxstyle --ep-library /opt/libfoo.so:FooExecutionProvider bench --provider foo). Also ONNXSTYLE_EP_LIBRARIES, ';'-separated; worker processes inherit it.")] = None,
) -> None:
    """onnxstyle: portable, measurable neural style transfer."""
    if ep_library:
        from onnxstyle.plugin_eps import add_libraries

        add_libraries(ep_library)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Print a copy-pasteable fingerprint of this machine and its software."""
    from onnxstyle.sysinfo import fingerprint

    facts = fingerprint()
    _warn_environment()
    if as_json:
        out.print_json(json.dumps(facts))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            text = "; ".join(f"{name}: {item}" for name, item in value.items())
        else:
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        out.print(f"{key:26} {text}", highlight=False, markup=False)


@app.command()
def providers(
    check: Annotated[bool, typer.Option("--check", help="Run the loss and gradient on each usable provider: placement, parity with the CPU, TF32, libraries.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output (with --check: every measurement).")] = False,
) -> None:
    """List ONNX Runtime providers and torch devices, and why each unusable one is unusable (each usable one ran a Conv and a MatMul)."""
    import torch

    from onnxstyle.providers import ort_package, probe_providers, short_name
    from onnxstyle.runners import Runner, runner_status

    if check:
        _provider_check(as_json)
        return
    rows = [("onnxruntime", short_name(status.name), status.usable, status.reason) for status in probe_providers()]
    for device in ("cpu", "cuda"):
        reason = runner_status(Runner("torch", device))
        rows.append(("torch", device, reason is None, reason or "ok"))
    if as_json:
        out.print_json(json.dumps([{"engine": engine, "provider": name, "usable": usable, "reason": reason} for engine, name, usable, reason in rows]))
        return
    table = Table(title=f"execution providers ({ort_package()}, torch {torch.__version__})")
    for column in ("engine", "provider", "usable", "reason"):
        table.add_column(column)
    for engine, name, usable, reason in rows:
        table.add_row(engine, name, "yes" if usable else "no", Text(reason))
    out.print(table)


def _provider_check(as_json: bool) -> None:
    """``providers --check``: exits 8 when a usable provider runs nodes elsewhere, differs from the CPU, or uses TF32 for fp32."""
    from onnxstyle.errors import ProviderError
    from onnxstyle.provider_check import check_providers
    from onnxstyle.providers import ort_package

    _warn_environment()
    with err.status("running the loss and gradient on every usable provider…"):
        checks = check_providers()
    if as_json:
        out.print_json(json.dumps([check.as_dict() for check in checks]))
    else:
        table = Table(title=f"provider check: NIN 64 px loss+gradient ({ort_package()})")
        for column in ("runner", "verdict", "nodes (provider: count)", "memcpy", "shape ops", "grad vs torch-cpu", "grad vs fp64", "TF32"):
            table.add_column(column)
        for check in checks:
            if not check.usable:
                table.add_row(check.runner, "not usable", Text(check.reason), *["–"] * 5)
                continue
            if check.grad_error_vs_cpu is None:  # usable, but the check itself failed: its problems say why
                table.add_row(check.runner, "PROBLEM", "–", *["–"] * 5)
                continue
            placement = check.placement
            nodes = "; ".join(f"{name}: {count}" for name, count in placement.nodes.items()) if placement else "– (torch)"
            tf32 = "–" if check.tf32 is None else ("ON" if check.tf32 else "off") + f" ({max(check.tf32_errors.values()):.0e})"
            table.add_row(
                check.runner, "ok" if check.ok else "PROBLEM", Text(nodes), "–" if placement is None else str(placement.memcpy),
                "–" if placement is None else str(placement.shape_ops), f"{check.grad_error_vs_cpu:.1e}", f"{check.grad_error_vs_fp64:.1e}", tf32,
            )
        out.print(table)
        libraries = next((check.libraries for check in checks if check.libraries), [])
        out.print("GPU libraries loaded: " + (", ".join(libraries) if libraries else "none"), highlight=False, markup=False)
        for check in checks:
            for problem in check.problems:
                out.print(f"{check.runner}: {problem}", style="red", highlight=False, markup=False)
    failed = [check.runner for check in checks if check.usable and not check.ok]
    if failed:
        raise ProviderError(f"provider check failed for {', '.join(failed)}")


@app.command()
def auto(
    clear: Annotated[bool, typer.Option("--clear", help="Delete the cached measurements: the next --engine auto run measures again.")] = False,
) -> None:
    """Where --engine auto keeps what it measured on this machine (seconds per iteration of each candidate), and what it holds."""
    from onnxstyle.auto import cache_lines, cache_path, clear_cache

    if clear:
        out.print(f"deleted {cache_path()}" if clear_cache() else f"nothing to delete: {cache_path()} does not exist", highlight=False, markup=False)
        return
    for line in cache_lines():
        out.print(line, highlight=False, markup=False)


@app.command()
def export(
    backbone: Annotated[str, typer.Argument(help="vgg (vgg19) or nin.")],
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH.")] = "auto",
    layers: Annotated[Optional[str], typer.Option(help="Feature outputs, comma-separated (default: content+style layers).")] = None,
    content_layers: Annotated[Optional[str], typer.Option(help="Content layers of the loss graph.")] = None,
    style_layers: Annotated[Optional[str], typer.Option(help="Style layers of the loss graph.")] = None,
    pooling: Annotated[str, typer.Option(help="max or avg.")] = "max",
    opset: Annotated[int, typer.Option(help="ONNX opset (13..17).")] = 17,
    precision: Annotated[str, typer.Option(help="fp32, or fp16: network and adjoint in fp16, Grams and losses fp32 (validated to 1e-2).")] = "fp32",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Features model path; X.onnx also writes X.loss.onnx and X.json (default: models/…).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files at --output (it refuses otherwise).")] = False,
) -> None:
    """Export the feature extractor and the loss+gradient graph to ONNX, validated against torch."""
    from onnxstyle.exporters.export import export_backbone

    def plan(paths: list[Path]) -> None:
        err.print(f"writes {', '.join(str(path) for path in paths)}", highlight=False, markup=False)

    with _interrupt_note("export interrupted before writing: nothing was written"), err.status("exporting and validating against torch…"):
        result = export_backbone(
            backbone=backbone, weights=weights, layers=layers, content_layers=content_layers,
            style_layers=style_layers, pooling=pooling, opset=opset, precision=precision, output=output,  # type: ignore[arg-type]
            force=force, on_plan=plan,
        )
    if result.timing_only:
        err.print("[yellow]weights: synthetic — timing only, not a real style transfer[/]")
    worst, tolerance = result.worst_errors, result.tolerance
    out.print(f"features  {result.features_path}  (worst relative error vs torch {worst['features']:.1e} ≤ {tolerance:.0e})", highlight=False, markup=False)
    out.print(f"loss+grad {result.loss_path}  (worst relative error vs torch autograd {worst['loss']:.1e} ≤ {tolerance:.0e})", highlight=False, markup=False)
    out.print(f"metadata  {result.metadata_path}", highlight=False, markup=False)


@app.command()
def stylize(
    content: Annotated[Optional[str], typer.Argument(help="Content image.")] = None,
    styles: Annotated[Optional[list[str]], typer.Argument(help="One or more style images.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image (.png/.jpg/.webp/.tif).")] = Path("out.png"),
    demo: Annotated[bool, typer.Option(help=f"Use the built-in demo images (offline; {defaults.DEMO_SIZE} px, {defaults.DEMO_ITERATIONS} iterations from the content image unless set).")] = False,
    engine: Annotated[str, typer.Option(help="auto (the fastest runner here, measured once and cached: onnxstyle auto), onnxruntime or torch.")] = "auto",
    provider: Annotated[Optional[str], typer.Option(help="ORT provider (cpu, cuda, tensorrt, openvino, …) or torch device (cpu, cuda). Default: auto's choice, or cpu for a named engine.")] = None,
    model: Annotated[str, typer.Option(help="vgg or nin.")] = "vgg",
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH.")] = "auto",
    size: Annotated[Optional[str], typer.Option(help=f"Longest side, or WIDTHxHEIGHT (default {defaults.SIZE}).")] = None,
    iterations: Annotated[Optional[int], typer.Option(help=f"Iterations (L-BFGS: loss+gradient evaluations); default {defaults.ITERATIONS}.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="lbfgs (default) or adam (gradient scaled to unit mean, step cosine-decayed over the budget).")] = None,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate (pixels in [0, 1]).")] = defaults.LEARNING_RATE,
    content_weight: Annotated[float, typer.Option()] = defaults.CONTENT_WEIGHT,
    style_weight: Annotated[float, typer.Option()] = defaults.STYLE_WEIGHT,
    tv_weight: Annotated[float, typer.Option()] = defaults.TV_WEIGHT,
    content_layers: Annotated[Optional[str], typer.Option()] = None,
    style_layers: Annotated[Optional[str], typer.Option()] = None,
    style_blend_weights: Annotated[Optional[str], typer.Option(help="One weight per style image, e.g. 3,7.")] = None,
    style_scale: Annotated[float, typer.Option()] = 1.0,
    init: Annotated[Optional[str], typer.Option(help="random | content | PATH (default random; content with --demo).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    original_colors: Annotated[bool, typer.Option(help="Keep the content's colours (luminance-only transfer).")] = False,
    pooling: Annotated[str, typer.Option(help="max or avg.")] = "max",
    save_every: Annotated[int, typer.Option(help="Also save every N iterations (0: only at the end).")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (pinned).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32; bf16 (torch on CPUs with AVX-512-BF16/AMX, CUDA); fp16 (onnxruntime, torch on CUDA); tf32 (CUDA). Default: auto's choice, or fp32 for a named engine.")] = None,
    cuda_graph: Annotated[bool, typer.Option(help="ONNX Runtime on cuda/tensorrt: capture the loss+gradient run once per size and replay it.")] = False,
    tile: Annotated[Optional[int], typer.Option(help="Tile core edge in px for the exact tiled gradient; 0 never tiles. Default: tile only when the image would not fit in free memory.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Run the tiles on a Ray cluster: HOST:PORT, ray://HOST:PORT, or local (pip install 'onnxstyle[cluster]').")] = None,
    scales: Annotated[Optional[str], typer.Option(help=f"Multi-resolution sizes, increasing (e.g. 512,1024,2048,4096,7680); each starts from the last result. Default from {defaults.MULTI_SCALE_FROM} px: {defaults.COARSEST_SIDE}, doubling, up to --size.")] = None,
    scale_iterations: Annotated[Optional[str], typer.Option(help="Iterations per scale (comma list); default --iterations at the first scale, halved per scale.")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Wall-time budget in seconds for the whole run, set-up included; the best image so far is written when it ends (with --iterations, whichever comes first).")] = None,
) -> None:
    """Optimise an image so its features match CONTENT and its Gram matrices match STYLE(s)."""
    import time

    from onnxstyle.errors import UsageError
    from onnxstyle.images import DEMO_CONTENT, DEMO_STYLE, parse_size
    from onnxstyle.stylize import TIME_BOUND_ITERATIONS, StylizeConfig, default_scales, parse_scales, stylize_scales

    started = time.perf_counter() - _seconds_since_start()

    if demo:
        content, styles, size = content or DEMO_CONTENT, styles or [DEMO_STYLE], size or str(defaults.DEMO_SIZE)
        iterations, init = defaults.DEMO_ITERATIONS if iterations is None else iterations, init or "content"
    if content is None or not styles:
        raise UsageError("give CONTENT and at least one STYLE image, or --demo")
    _warn_threads(threads)
    config = StylizeConfig(
        engine=engine, provider=provider, model=model, weights=weights,
        iterations=iterations if iterations is not None else (defaults.ITERATIONS if max_time is None else TIME_BOUND_ITERATIONS),
        optimizer=optimizer, learning_rate=learning_rate, content_weight=content_weight, style_weight=style_weight,  # type: ignore[arg-type]
        tv_weight=tv_weight, content_layers=content_layers, style_layers=style_layers, style_blend_weights=style_blend_weights,
        style_scale=style_scale, seed=seed, original_colors=original_colors, pooling=pooling, save_every=save_every,  # type: ignore[arg-type]
        threads=threads, precision=precision, tile=tile, cuda_graph=cuda_graph, cluster=cluster, max_time=max_time,
    )
    deadline = None if max_time is None else started + max_time
    plan = parse_scales(scales) if scales else default_scales(parse_size(size or defaults.SIZE))
    kept = f"{output} was not written" if not output.exists() else f"{output} was left as it was"
    progress, report = _stylize_progress(config.iterations)
    try:
        with _interrupt_note(f"stylize interrupted while setting up; {kept}"):
            if len(plan) > 1:
                err.print(f"multi-resolution: {', '.join(str(scale) for scale in plan)}", highlight=False)
            result = stylize_scales(
                content, styles, output, scales=plan, iterations=scale_iterations or config.iterations, init=init or "random",
                progress=report, config=config, deadline=deadline, announce=lambda line: err.print(line, highlight=False, markup=False),
            )
    finally:
        if progress.live.is_started:  # stopping a bar that never started prints an empty line
            progress.stop()
    _print_stylized(result)


def _bench_progress(total: int) -> tuple[Progress, Any, Any]:
    """A cells bar and the callback that names the cell and its stage; it redraws twice a second, not ten times,
    since the parent's CPU time is counted against every window."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} cells"),
        TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=err, refresh_per_second=2,
    )
    task = progress.add_task("bench", total=total, state="measuring the fp32 GEMM roof")

    def on_progress(cell: Any, state: str) -> None:
        progress.update(task, description=f"{cell.model} {cell.runner} {cell.precision} {cell.width}x{cell.height}", state=state)

    return progress, task, on_progress


def _stylize_progress(total: int) -> tuple[Progress, Any]:
    """A progress bar (loss, it/s) and the callback that drives it; each scale of a multi-resolution run counts from 1.
    A run that only a time budget ends (``--max-time`` without ``--iterations``) shows a pulsing bar and no total."""
    from onnxstyle.stylize import TIME_BOUND_ITERATIONS

    def bounded(count: int) -> int | None:
        return None if count >= TIME_BOUND_ITERATIONS else max(count, 1)

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}{task.fields[of]}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"), TimeElapsedColumn(), console=err,
    )
    limit = bounded(total)
    task = progress.add_task("stylize", total=limit, loss="…", rate="…", of="" if limit is None else f"/{limit}")
    started: list[float] = []

    def report(step: int, total: int, terms: Any) -> None:
        import time

        now = time.perf_counter()
        if not started:
            progress.start()
        if not started or step == 1:
            started[:] = [now]
        rate = (step - 1) / (now - started[0]) if step > 1 and now > started[0] else 0.0
        limit = bounded(total)
        progress.update(task, completed=step, total=limit, of="" if limit is None else f"/{limit}", loss=f"{terms.total:.4g}", rate=f"{rate:.2f}")

    return progress, report


def _print_stylized(result: Any) -> None:
    """What the run wrote and how it went, in one line (with notes on tiling and synthetic weights)."""
    where = result.engine.get("provider_effective") or result.engine.get("device")
    tiling = result.engine.get("tiling")
    if isinstance(tiling, dict):
        err.print(
            f"tiled: cores of {tiling['core']} px read {tiling['halo_before']}/{tiling['halo_after']} px halos (exact whole-image gradient)",
            highlight=False,
        )
    cluster = result.engine.get("cluster")
    if isinstance(cluster, dict):
        workers = ", ".join(f"{worker['node']} ×{worker['threads']}" for worker in cluster["workers"])
        lost = f"; lost and rerun elsewhere: {', '.join(cluster['lost'])}" if cluster["lost"] else ""
        err.print(f"cluster: tile workers on {workers}{lost}", highlight=False, markup=False)
    if result.timing_only:
        err.print("[yellow]weights: synthetic — timing only, not a real style transfer (install real weights: onnxstyle weights where)[/]")
    out.print(
        f"wrote {result.output}: {result.iterations} iterations in {result.seconds:.1f}s ({_pace(result.iterations, result.seconds)}) "
        f"on {result.engine['engine']} [{where}], loss {result.losses[0]:.4g} → {result.best_loss:.4g} "
        f"({-100 * result.loss_reduction:+.1f}%), weights {result.weights}{'; ended by --max-time' if result.ended_by == 'time' else ''}",
        highlight=False,
        markup=False,
    )


def _seconds_since_start() -> float:
    """How long this process has run: a user's time budget starts when they pressed Enter, not after our imports."""
    import time

    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def _warn_threads(threads: int | None) -> None:
    """More threads than CPUs only makes them wait for each other: say so (the library caps them)."""
    from onnxstyle.sysinfo import default_threads

    if threads is not None and threads > default_threads():
        err.print(f"[yellow]--threads {threads} is more than the {default_threads()} CPUs this process may use; using {default_threads()}[/]")


def _warn_environment() -> None:
    from onnxstyle.sysinfo import environment_warnings

    for warning in environment_warnings():
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)


def _pace(iterations: int, seconds: float) -> str:
    """it/min, or seconds per iteration when that reads better (large images)."""
    rate = 60 * iterations / seconds if seconds > 0 else 0.0
    return f"{rate:,.0f} it/min" if rate >= 10 else f"{seconds / max(iterations, 1):,.1f} s/it"


@app.command()
def bench(
    provider: Annotated[Optional[str], typer.Option(help="Comma list: cpu, cuda, tensorrt, … (ONNX Runtime), torch, torch-cuda, eager, eager-cuda; or all. Default: every usable one.")] = None,
    model: Annotated[str, typer.Option(help="Comma list of vgg19/vgg, nin.")] = "vgg19,nin",
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes or WIDTHxHEIGHT.")] = "64,128,256",
    precision: Annotated[str, typer.Option(help="Comma list of fp32, bf16, fp16, tf32; a runner that cannot run one shows the cell as skipped, with why.")] = "fp32",
    duration: Annotated[float, typer.Option(help="Seconds of timed iterations per cell, split over --runs windows.")] = 6.0,
    iterations: Annotated[Optional[int], typer.Option(help="Iterations per window instead of --duration.")] = None,
    runs: Annotated[int, typer.Option(help="Timed windows per cell (median and spread are over these).")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed iterations after the first.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads, pinned for every runner (default: CPUs available to this process).")] = None,
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH (auto: real if present, else synthetic, timing only).")] = "auto",
    check: Annotated[bool, typer.Option(help="Gradient check against torch autograd per runner and model.")] = True,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON, CSV, Markdown and PNG reports.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default bench-YYYYmmdd-HHMMSS).")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Tile core edge (px) for our engines; 0 never tiles. Default: tile cells that would not fit.")] = None,
    cuda_graph: Annotated[bool, typer.Option(help="ONNX Runtime runners on cuda/tensorrt capture each cell's run as a CUDA graph.")] = False,
    interleave: Annotated[bool, typer.Option("--interleave/--sequential", help="Alternate the timed windows of a size's runners (ratios under the same load) where they fit in memory together, or run cells one after another.")] = True,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE set in every worker process before it starts (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE; recorded in the report.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="Measure on every node of a Ray cluster (HOST:PORT, ray://HOST:PORT or local), each node the cells it can run; one report, by node.")] = None,
) -> None:
    """Iterations per minute by runner × model × size, beside the 2016 study; writes reports."""
    from onnxstyle.bench.options import bench_options
    from onnxstyle.bench.records import Cell
    from onnxstyle.bench.run import BenchRun, run_bench
    from onnxstyle.report import check_directory, check_stem, new_report
    from onnxstyle.report.run import ReportRun
    from onnxstyle.weights import resolve

    if name:
        check_stem(name)
    request = {
        "provider": provider, "model": model, "sizes": sizes, "precision": precision, "duration": duration, "iterations": iterations,
        "runs": runs, "warmup": warmup, "threads": threads, "weights": weights, "check": check, "tile": tile, "cuda_graph": cuda_graph,
        "interleave": interleave, "environment": env or [],
    }
    if cluster is not None:
        _cluster_bench(request, cluster, out_dir, name)
        return
    options = bench_options(**request)
    check_directory(out_dir)
    _warn_threads(threads)
    _warn_environment()
    resolved = {spec.name: resolve(weights, spec) for spec in options.models}
    labels = {backbone: chosen.label for backbone, chosen in resolved.items()}
    if any(chosen.weight_set.synthetic for chosen in resolved.values()):
        err.print("[yellow]weights: synthetic — timing only (speed is what is measured; images are not meaningful)[/]")
    progress, task, on_progress = _bench_progress(len(options.runners) * len(options.models) * len(options.sizes) * len(options.precisions))
    report = new_report([], options.as_dict(), {}, labels, ["onnxstyle", *sys.argv[1:]], False)
    with ReportRun(
        out_dir, name, command="bench", report=report, holder="bench that is still running", on_moved=_say_yellow,
        on_failure=lambda text: progress.console.print(text, style="red", highlight=False, markup=False),
    ) as run:

        def on_cell(cell: Cell, bench: BenchRun) -> None:
            progress.advance(task)
            figure = f"{cell.stats['median']:,.1f} it/min" if cell.stats else f"{cell.status}: {cell.reason}"
            if cell.noisy:
                figure += f"  [noisy: {'; '.join(reason['text'] for reason in cell.noise)}]"
            progress.console.print(f"  {cell.model:6} {cell.runner:14} {cell.precision:5} {cell.width}x{cell.height:<5} {figure}", highlight=False, markup=False)
            run.update(bench.cells, bench.roofs, bench.interrupted)

        with progress:
            cells, roofs, interrupted = run_bench(options, progress=on_progress, on_cell=on_cell)
        run.update(cells, roofs, interrupted, final=True)
    _end_bench(run, cells, interrupted)


def _end_bench(run: Any, cells: list[Any], interrupted: bool) -> None:
    """A bench's (or a cluster bench's) tables, files, verdict, and its exit: a failed write, an interruption, or nothing measured."""
    _show(run.report, verdict=False)
    _report_paths(run)
    _verdict(run.report)
    run.check_written()
    if interrupted:
        raise run.interrupted(f"the {sum(cell.status == 'ok' for cell in cells)} cells measured", "nothing was measured")
    _exit_if_unmeasured(cells, "cell")


def _report_paths(run: Any) -> None:
    """The files a report run wrote, then the fuller earlier report it left in place, if any."""
    for line in run.path_lines():
        out.print(line, highlight=False, markup=False)
    if run.kept:
        _say_yellow(run.kept)


def _say_yellow(text: str) -> None:
    err.print(text, style="yellow", highlight=False, markup=False)


def _exit_if_unmeasured(outcomes: list[Any], unit: str) -> None:
    """Nothing measured: the first failure's line, and its exit code (2 when everything was skipped)."""
    from onnxstyle.bench.run import nothing_measured

    if (unmeasured := nothing_measured(outcomes, unit=unit)) is not None:
        err.print("[red]error:[/] ", end="")
        err.print(unmeasured[0], highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(unmeasured[1])


def _cluster_bench(request: dict[str, Any], address: str, out_dir: Path, name: str | None) -> None:
    """``bench --cluster``: the nodes decide what they can run; the report is rewritten after every cell that comes back."""
    from onnxstyle.bench.options import bench_options
    from onnxstyle.cluster import parse_address
    from onnxstyle.cluster.bench import ClusterRun, run_cluster_bench
    from onnxstyle.report import check_directory, new_report
    from onnxstyle.report.run import ReportRun
    from onnxstyle.weights import resolve

    address = parse_address(address)
    options = bench_options(**request, local_runners=False)
    grid = [(spec.name, width, height) for spec in options.models for width, height in options.sizes]
    check_directory(out_dir)
    labels = {spec.name: resolve(request["weights"], spec).label for spec in options.models}
    report = new_report([], {**options.as_dict(), "cluster": address, "runners": request["provider"] or "every usable one, per node"}, {}, labels, ["onnxstyle", *sys.argv[1:]], False)
    shown: set[tuple[str, str, int, int, str]] = set()
    with ReportRun(out_dir, name, command="bench", report=report, on_failure=_say_red) as run:

        def on_change(cluster: ClusterRun) -> None:
            for cell in cluster.cells:
                if cell.key not in shown and cell.status != "pending":
                    shown.add(cell.key)
                    figure = f"{cell.stats['median']:,.1f} it/min" if cell.stats else f"{cell.status}: {cell.reason}"
                    out.print(f"  {cell.model:6} {cell.label:28} {cell.precision:5} {cell.width}x{cell.height:<5} {figure}", highlight=False, markup=False)
            run.report.nodes = cluster.nodes
            run.update(cluster.cells, cluster.roofs, cluster.interrupted)

        with err.status(Text(f"benchmarking on the cluster at {address}…")), _interrupt_note(
            f"bench interrupted while setting up the cluster at {address}; nothing was measured and no report was written"
        ):
            cluster = run_cluster_bench(request, grid, address=address, on_change=on_change)
        run.report.nodes = cluster.nodes
        run.update(cluster.cells, cluster.roofs, cluster.interrupted, final=True)
    _end_bench(run, cluster.cells, cluster.interrupted)


def _say_red(text: str) -> None:
    err.print(text, style="red", highlight=False, markup=False)


@app.command("cluster-scale")
def cluster_scale(
    size: Annotated[str, typer.Option(help="The image the scale table is for, WIDTHxHEIGHT.")] = "7680x4320",
    tile: Annotated[int, typer.Option(help="Tile core edge in px.")] = 512,
    overhead_size: Annotated[int, typer.Option(help="Square size at which Ray's overhead is measured on a local cluster; 0 skips it.")] = 2048,
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH (speed does not depend on them).")] = "auto",
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON and Markdown report.")] = Path("reports"),
    name: Annotated[str, typer.Option(help="Report file stem.")] = "cluster-scale",
) -> None:
    """Tiled VGG19 over N nodes: bytes and compute per tile, the modelled speed-up on 1–64 nodes, and Ray's measured overhead."""
    from onnxstyle.cluster.scale import cluster_scale as measure_scale
    from onnxstyle.cluster.scale import scale_request
    from onnxstyle.report import check_directory, check_stem
    from onnxstyle.report.run import ReportRun
    from onnxstyle.report.scale import scale_files, scale_markdown

    request = scale_request(size, core=tile, overhead_size=overhead_size, weights=weights)
    check_directory(out_dir)
    check_stem(name)
    with err.status("…") as status:
        table, overhead = measure_scale(request, on_stage=lambda text: status.update(text))
    with ReportRun(out_dir, name, command="cluster-scale", measured_in=lambda path: 0, unit="tables") as run:
        run.save(1, scale_files(table, overhead))
    run.check_written(lost=False)
    out.print(scale_markdown(table, overhead), highlight=False, markup=False)
    _report_paths(run)


@app.command()
def parity(
    provider: Annotated[str, typer.Option(help="Comma list of runners, as bench's --provider (cpu, cuda, torch-cuda, eager-cuda, …).")] = "cpu,torch",
    model: Annotated[str, typer.Option(help="Comma list of vgg19/vgg, nin.")] = "vgg19",
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes or WIDTHxHEIGHT.")] = "256",
    precision: Annotated[str, typer.Option(help="fp32, tf32, fp16 or bf16, for every runner.")] = "fp32",
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: CPUs available to this process).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON and Markdown report.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default parity-YYYYmmdd-HHMMSS).")] = None,
) -> None:
    """Gradient parity of each runner against torch autograd (CPU, fp32) at the sizes given, with the same targets."""
    from onnxstyle.parity import gradient_parity, parity_plan
    from onnxstyle.report import check_directory
    from onnxstyle.report.parity import ParityRow, measured, parity_files, rows_in
    from onnxstyle.report.run import ReportRun
    from onnxstyle.sysinfo import fingerprint

    plan = parity_plan(provider=provider, model=model, sizes=sizes, precision=precision, threads=threads)
    check_directory(out_dir)
    _warn_threads(threads)
    _warn_environment()
    system = fingerprint()
    rows: list[ParityRow] = []
    with ReportRun(out_dir, name, command="parity", measured_in=rows_in, unit="measured rows", on_failure=_say_red) as run:

        def on_row(row: ParityRow) -> None:
            rows.append(row)
            figure = f"{row.status}: {row.error}" if row.status != "ok" else f"gradient {row.grad_error:.1e}, loss {row.loss_error:.1e} ({row.seconds:.1f} s)"
            out.print(f"  {row.model:6} {row.width}x{row.height:<5} {row.runner:14} {row.precision:5} {figure}", highlight=False, markup=False)
            run.save(measured(rows), parity_files(rows, system))

        try:
            gradient_parity(plan, weights=weights, threads=threads, on_row=on_row)
        except KeyboardInterrupt:
            raise run.interrupted(f"the {measured(rows)} rows measured so far", "nothing was measured yet") from None
    _report_paths(run)
    run.check_written()
    _exit_if_unmeasured(rows, "row")


@app.command()
def converge(
    sizes: Annotated[str, typer.Option(help="Comma list of square sizes.")] = "256,512",
    seconds: Annotated[str, typer.Option(help="Wall time per configuration: one number, or one per size (e.g. 60,150).")] = "60",
    configs: Annotated[str, typer.Option(help="Comma list of RUNNER[:PRECISION[:OPTIMIZER[:c2f]]][@SECONDS] or auto[@SECONDS], e.g. cpu:fp32:lbfgs:c2f,torch:bf16:adam,eager:fp32:adam,auto@60 (c2f: coarse to fine; auto: what stylize --max-time runs with no other flags; @SECONDS: a budget of its own). Default: every usable one of the built-in set.")] = "",
    weights: Annotated[str, typer.Option(help="auto | catalogue id | PATH (real weights: a loss is only a quality on them).")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: CPUs available to this process).")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the JSON, Markdown and PNG report.")] = Path("reports"),
    name: Annotated[Optional[str], typer.Option(help="Report file stem (default quality-YYYYmmdd-HHMMSS).")] = None,
) -> None:
    """Time to quality: every configuration runs the same problem for the same wall time; the fp32 torch loss scores its snapshots."""
    from onnxstyle.bench.options import parse_seconds, parse_square_sizes
    from onnxstyle.quality import default_configs, parse_configs
    from onnxstyle.quality import converge as run_converge
    from onnxstyle.report import check_directory, check_stem, to_rich
    from onnxstyle.report.quality import measured_in, quality_files, quality_table, scored, summary_lines
    from onnxstyle.report.run import ReportRun

    check_directory(out_dir)
    if name:
        check_stem(name)
    size_list, budgets = parse_square_sizes(sizes, "converge"), parse_seconds(seconds)
    _warn_threads(threads)
    chosen = parse_configs(configs) if configs else default_configs()
    command = ["onnxstyle", *sys.argv[1:]]
    with ReportRun(
        out_dir, name, command="converge", prefix="quality", measured_in=measured_in, unit="scored configurations",
        on_moved=_say_yellow, on_failure=_say_red,
    ) as run:

        def save(report: Any) -> None:
            """After every configuration: an interrupted or killed run keeps what it measured, and never replaces a fuller report."""
            report.options["command"] = command
            run.save(scored(report), quality_files(report))

        try:
            with err.status("…") as status:
                report = run_converge(
                    configs=chosen, sizes=size_list, seconds=budgets, weights=weights, threads=threads,
                    progress=lambda text: status.update(text), on_update=save, skip_unusable=not configs,
                )
        except KeyboardInterrupt:
            raise run.interrupted("the configurations measured so far", "nothing was measured yet") from None
    if report.timing_only:
        err.print("[yellow]weights: synthetic — losses of synthetic weights say nothing about image quality[/]")
    out.print(to_rich(quality_table(report)))
    for line in summary_lines(report):
        out.print(line, highlight=False, markup=False)
    _report_paths(run)
    run.check_written(lost=False)
    if report.interrupted:
        count = scored(report)
        never = f"; not run: {', '.join(report.not_run)}" if report.not_run else ""
        raise run.interrupted(f"{count} configuration{'' if count == 1 else 's'} measured{never}", f"nothing was written{never}")


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="vgg19/vgg or nin.")] = "vgg19",
    size: Annotated[str, typer.Option(help="Image size: one side or WIDTHxHEIGHT.")] = "256",
    provider: Annotated[str, typer.Option(help="ONNX Runtime provider (cpu, cuda, tensorrt, …).")] = "cpu",
    runs: Annotated[int, typer.Option(help="Profiled loss+gradient runs (after --warmup unprofiled ones).")] = 5,
    warmup: Annotated[int, typer.Option(help="Runs before the profiled ones (first-run costs excluded).")] = 2,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: CPUs available to this process).")] = None,
    weights: Annotated[str, typer.Option(help="auto | synthetic | catalogue id | PATH.")] = "auto",
    conv: Annotated[str, typer.Option(help="auto | direct | winograd: how the wide 3x3 convolutions are built (auto: as stylize and bench run them).")] = "auto",
    top: Annotated[int, typer.Option(help="Slowest nodes to list.")] = 15,
) -> None:
    """Where one loss+gradient run spends its time on ONNX Runtime: ORT's profiler by operator and by node."""
    from onnxstyle.errors import UsageError
    from onnxstyle.images import parse_size
    from onnxstyle.profiling import profile_loss

    if conv not in ("auto", "direct", "winograd"):
        raise UsageError(f"--conv must be auto, direct or winograd, got '{conv}'")
    if top <= 0:
        raise UsageError(f"--top must be positive, got {top}")
    side = parse_size(size)
    width, height = side if isinstance(side, tuple) else (side, side)
    _warn_threads(threads)
    with err.status(Text(f"profiling {model} at {width}x{height} on {provider}…")):
        result = profile_loss(
            model=model, size=(width, height), provider=provider, threads=threads, runs=runs, warmup=warmup, weights=weights,
            winograd=None if conv == "auto" else conv == "winograd",
        )
    out.print(
        f"{result.model} {result.width}x{result.height} on {result.provider}: {result.run_milliseconds:,.1f} ms per loss+gradient run "
        f"(mean of {result.runs}), {result.kernel_milliseconds:,.1f} ms in kernels; convolutions: {result.conv_algorithm}",
        highlight=False,
        markup=False,
    )
    by_op = Table(title="by operator (ms per run)")
    for column in ("operator", "ms", "share"):
        by_op.add_column(column, justify="left" if column == "operator" else "right")
    for op_type, milliseconds, share in result.by_operator():
        by_op.add_row(op_type, f"{milliseconds:,.2f}", f"{100 * share:.1f}%")
    out.print(by_op)
    nodes = Table(title=f"slowest {top} nodes (ms per run)")
    for column in ("node", "operator", "ms"):
        nodes.add_column(column, justify="right" if column == "ms" else "left")
    for node in result.slowest(top):
        nodes.add_row(Text(node.name), node.op_type, f"{node.milliseconds:,.2f}")
    out.print(nodes)


def _show(report: object, verdict: bool = True) -> None:
    from onnxstyle.report import Report, detail_table, speed_table, system_lines, to_rich

    assert isinstance(report, Report)
    for line in system_lines(report):
        out.print(line, highlight=False, markup=False)
    if report.interrupted:
        out.print("[yellow]interrupted: unfinished cells are marked[/]")
    out.print(to_rich(speed_table(report)))
    out.print(to_rich(detail_table(report)))
    if verdict:
        _verdict(report)


def _verdict(report: object) -> None:
    """The noisy cells with their reasons, then the one line that says whether the numbers can be trusted."""
    from onnxstyle.report import Report, noise_lines, trusted

    assert isinstance(report, Report)
    *noisy, line = noise_lines(report)
    for text in noisy:
        out.print(text, style="yellow", highlight=False, markup=False)
    out.print(line, style="green" if trusted(report) else "bold red", highlight=False, markup=False)


@contextmanager
def _interrupt_note(text: str) -> Iterator[None]:
    """A Ctrl-C or SIGTERM inside this block ends the command with ``text``: what it interrupted, and what it kept."""
    from onnxstyle.errors import Interrupted

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(text) from None


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, recorded first, so messages and cell reasons name the signal that came."""
    from onnxstyle.errors import note_interruption

    note_interruption("SIGTERM")
    raise KeyboardInterrupt


@report_app.command("show")
def report_show(path: Annotated[Path, typer.Argument(help="A bench or quality (converge) report (.json).")]) -> None:
    """Re-render a saved bench or quality (converge) report."""
    from onnxstyle.report import to_rich
    from onnxstyle.report.loading import load_any
    from onnxstyle.report.quality import QualityReport, interrupted_line, quality_table, summary_lines

    report = load_any(path)
    if isinstance(report, QualityReport):
        out.print(f"machine: {report.system.get('cpu', '?')}; weights {report.weights}; created {report.created}", highlight=False, markup=False)
        if (line := interrupted_line(report)) is not None:
            out.print(line, style="yellow", highlight=False, markup=False)
        out.print(to_rich(quality_table(report)))
        for line in summary_lines(report):
            out.print(line, highlight=False, markup=False)
        return
    _show(report)


@report_app.command("compare")
def report_compare(
    paths: Annotated[list[Path], typer.Argument(help="Two or more reports; the first is the baseline.")],
    plot_path: Annotated[Path, typer.Option("--plot", help="Where to write the comparison plot.")] = Path("comparison.png"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --plot file that is not an earlier comparison plot.")] = False,
) -> None:
    """How the machines differ, then each cell's speed relative to the first report (± uncertainty)."""
    from onnxstyle.errors import UsageError
    from onnxstyle.files import check_output
    from onnxstyle.report import PLOT_FORMATS, compare_plot, differences_table, load_report, ratio_table, to_rich
    from onnxstyle.report.compare import is_comparison_plot

    if len(paths) < 2:
        raise UsageError("report compare needs at least two reports (the first is the baseline)")
    check_output(plot_path, formats=PLOT_FORMATS, inputs=paths, replace=force or is_comparison_plot(plot_path), what="plot")
    reports = [load_report(path) for path in paths]
    names = [path.name for path in paths]
    differences = differences_table(reports, names)
    if not differences.rows:
        out.print("machines and software: identical fingerprints")
    else:
        out.print("[bold]how the machines and software differ[/bold]")
        out.print(to_rich(differences))
    baseline = reports[0]
    for other, label in zip(reports[1:], names[1:], strict=True):
        table = ratio_table(baseline, other, names[0], label)
        if not table.rows:
            out.print(f"{label}: no cells in common with {names[0]}", highlight=False, markup=False)
        else:
            out.print(Text.assemble((f"{label} relative to {names[0]}", "bold"), " (ratio >1 is faster; ± from both runs' spreads)"), highlight=False)
            out.print(to_rich(table))
    out.print(f"plot {compare_plot(baseline, reports[1:], plot_path)}", highlight=False, markup=False)


@weights_app.command("list")
def weights_list() -> None:
    """Show every known weight set with its source, check, preprocessing and licence."""
    from onnxstyle.weights import CATALOGUE, find_cached

    table = Table(title="weights catalogue")
    for column in ("id", "backbone", "file", "size", "preprocessing", "licence", "cached"):
        table.add_column(column)
    for entry in CATALOGUE.values():
        cached = find_cached(entry)
        table.add_row(entry.id, entry.backbone, entry.filename, entry.size, entry.preprocessing.name, entry.licence, Text(str(cached)) if cached else "no")
    table.add_row("synthetic", "any", "—", "—", "imagenet-rgb", "n/a", "built in (timing only)")
    out.print(table)


@weights_app.command("where")
def weights_where() -> None:
    """Where weight files are looked for, and the URL of each."""
    from onnxstyle.weights import CATALOGUE, search_paths

    for entry in CATALOGUE.values():
        out.print(Text.assemble((entry.id, "bold"), f"  {entry.url}"), highlight=False)
        for path in search_paths(entry):
            out.print(f"  {path}{'  (present)' if path.is_file() else ''}", highlight=False, markup=False)


@weights_app.command("verify")
def weights_verify(
    ids: Annotated[Optional[list[str]], typer.Argument(help="Catalogue ids or files (default: every cached entry).")] = None,
) -> None:
    """Re-hash cached weight files against the catalogue, or check that a file loads; non-zero exit on any failure."""
    from onnxstyle.errors import WeightsError, WeightsNotFoundError, first_line
    from onnxstyle.weights import CATALOGUE, find_cached, verify

    targets = ids or [entry.id for entry in CATALOGUE.values() if find_cached(entry)]
    if not targets:
        raise WeightsNotFoundError("no weight files are cached, so nothing was verified (see: onnxstyle weights where)")
    failures: list[tuple[str, WeightsError]] = []
    for target in targets:
        try:
            out.print(f"ok  {target}: {verify(target)}", highlight=False, markup=False)
        except WeightsError as error:
            failures.append((target, error))
            out.print(f"bad {target}: {first_line(error)}", highlight=False, markup=False)
    if failures:
        target, error = failures[0]
        raise type(error)(f"{len(failures)} of {len(targets)} failed verification; the first, {target}: {first_line(error)}")


def _parser_exceptions() -> Any:
    """The exception module of the click that parses our flags: typer ≥ 0.22 carries its own copy, older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    """Console entry point: typed errors print one line and exit with their code, never a traceback.

    SIGTERM (a CI timeout, ``kill``) is taken as Ctrl-C: every command keeps what it finished, and the line says which came.
    """
    import signal

    from onnxstyle.errors import Interrupted, interruption, note_interruption

    note_interruption("Ctrl-C")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    parsing = _parser_exceptions()
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except parsing.NoArgsIsHelpError as error:
        out.print(error.ctx.get_help(), highlight=False, markup=False)
        sys.exit(error.exit_code)
    except parsing.ClickException as error:
        # click's own box is drawn at 80 columns and split over lines: a bad flag is one line like every other error
        context = getattr(error, "ctx", None)
        hint = f" (see: {context.command_path} --help)" if isinstance(error, parsing.UsageError) and context is not None else ""
        err.print("error: ", style="red", end="")
        err.print(f"{error.format_message()}{hint}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        err.print("error: ", style="red", end="")
        err.print(f"interrupted ({interruption()})", highlight=False, markup=False, soft_wrap=True)
        sys.exit(Interrupted.exit_code)
    except OnnxstyleError as error:
        text = f"{error} ({interruption()})" if isinstance(error, Interrupted) else str(error)
        err.print("[red]error:[/] ", end="")
        err.print(text, highlight=False, markup=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("[red]error:[/] ", end="")
        err.print(f"interrupted ({interruption()})", highlight=False, markup=False, soft_wrap=True)
        sys.exit(Interrupted.exit_code)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
