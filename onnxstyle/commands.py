"""What each command does between its flags and the library: the report run, the progress shown, the result printed.

``cli`` maps flags to these keyword-only functions (optimum's shape: a thin CLI over library calls); each
imports what it needs when it runs, so ``--help`` loads neither torch nor ONNX Runtime.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from onnxstyle import console, defaults
from onnxstyle.console import (
    bench_progress,
    exit_if_unmeasured,
    interrupt_note,
    print_stylized,
    report_paths,
    say_red,
    say_yellow,
    show_bench,
    stylize_progress,
    verdict,
    warn_environment,
    warn_threads,
)


def _provider_check(as_json: bool) -> None:
    """``providers --check``: exits 8 when a usable provider runs nodes elsewhere, differs from the CPU, or uses TF32 for fp32."""
    from onnxstyle.errors import ProviderError
    from onnxstyle.provider_audit import check_providers
    from onnxstyle.ort_providers import ort_package

    warn_environment()
    with console.err.status("running the loss and gradient on every usable provider…"):
        checks = check_providers()
    if as_json:
        console.out.print_json(json.dumps([check.as_dict() for check in checks]))
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
        console.out.print(table)
        libraries = next((check.libraries for check in checks if check.libraries), [])
        console.out.print("GPU libraries loaded: " + (", ".join(libraries) if libraries else "none"), highlight=False, markup=False)
        for check in checks:
            for problem in check.problems:
                console.out.print(f"{check.runner}: {problem}", style="red", highlight=False, markup=False)
    failed = [check.runner for check in checks if check.usable and not check.ok]
    if failed:
        raise ProviderError(f"provider check failed for {', '.join(failed)}")


def _end_bench(run: Any, cells: list[Any], interrupted: bool) -> None:
    """A bench's (or a cluster bench's) tables, files, verdict, and its exit: a failed write, an interruption, or nothing measured."""
    show_bench(run.report, with_verdict=False)
    report_paths(run)
    verdict(run.report)
    run.check_written()
    if interrupted:
        raise run.interrupted(f"the {sum(cell.status == 'ok' for cell in cells)} cells measured", "nothing was measured")
    exit_if_unmeasured(cells, "cell")


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
    with ReportRun(out_dir, name, command="bench", report=report, on_failure=say_red) as run:

        def on_change(cluster: ClusterRun) -> None:
            for cell in cluster.cells:
                if cell.key not in shown and cell.status != "pending":
                    shown.add(cell.key)
                    figure = f"{cell.stats['median']:,.1f} it/min" if cell.stats else f"{cell.status}: {cell.reason}"
                    console.out.print(f"  {cell.model:6} {cell.label:28} {cell.precision:5} {cell.width}x{cell.height:<5} {figure}", highlight=False, markup=False)
            run.report.nodes = cluster.nodes
            run.update(cluster.cells, cluster.roofs, cluster.interrupted)

        with console.err.status(Text(f"benchmarking on the cluster at {address}…")), interrupt_note(
            f"bench interrupted while setting up the cluster at {address}; nothing was measured and no report was written"
        ):
            cluster = run_cluster_bench(request, grid, address=address, on_change=on_change)
        run.report.nodes = cluster.nodes
        run.update(cluster.cells, cluster.roofs, cluster.interrupted, final=True)
    _end_bench(run, cluster.cells, cluster.interrupted)


def env(*, as_json: bool) -> None:
    from onnxstyle.sysinfo import fingerprint

    facts = fingerprint()
    warn_environment()
    if as_json:
        console.out.print_json(json.dumps(facts))
        return
    for key, value in facts.items():
        if isinstance(value, dict):
            text = "; ".join(f"{name}: {item}" for name, item in value.items())
        else:
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        console.out.print(f"{key:26} {text}", highlight=False, markup=False)


def providers(*, check: bool, as_json: bool) -> None:
    import torch

    from onnxstyle.ort_providers import ort_package, probe_providers, short_name
    from onnxstyle.runners import Runner, runner_status

    if check:
        _provider_check(as_json)
        return
    rows = [("onnxruntime", short_name(status.name), status.usable, status.reason) for status in probe_providers()]
    for device in ("cpu", "cuda"):
        reason = runner_status(Runner("torch", device))
        rows.append(("torch", device, reason is None, reason or "ok"))
    if as_json:
        console.out.print_json(json.dumps([{"engine": engine, "provider": name, "usable": usable, "reason": reason} for engine, name, usable, reason in rows]))
        return
    table = Table(title=f"execution providers ({ort_package()}, torch {torch.__version__})")
    for column in ("engine", "provider", "usable", "reason"):
        table.add_column(column)
    for engine, name, usable, reason in rows:
        table.add_row(engine, name, "yes" if usable else "no", Text(reason))
    console.out.print(table)


def auto(*, clear: bool) -> None:
    from onnxstyle.auto import cache_lines, cache_path, clear_cache

    if clear:
        console.out.print(f"deleted {cache_path()}" if clear_cache() else f"nothing to delete: {cache_path()} does not exist", highlight=False, markup=False)
        return
    for line in cache_lines():
        console.out.print(line, highlight=False, markup=False)


def export(
    *, backbone: str, weights: str, layers: str | None, content_layers: str | None, style_layers: str | None,
    pooling: str, opset: int, precision: str, output: Path | None, force: bool,
) -> None:
    from onnxstyle.exporters.export import export_backbone

    def plan(paths: list[Path]) -> None:
        console.err.print(f"writes {', '.join(str(path) for path in paths)}", highlight=False, markup=False)

    with interrupt_note("export interrupted before writing: nothing was written"), console.err.status("exporting and validating against torch…"):
        result = export_backbone(
            backbone=backbone, weights=weights, layers=layers, content_layers=content_layers,
            style_layers=style_layers, pooling=pooling, opset=opset, precision=precision, output=output,  # type: ignore[arg-type]
            force=force, on_plan=plan,
        )
    if result.timing_only:
        console.err.print("[yellow]weights: synthetic — timing only, not a real style transfer[/]")
    worst, tolerance = result.worst_errors, result.tolerance
    console.out.print(f"features  {result.features_path}  (worst relative error vs torch {worst['features']:.1e} ≤ {tolerance:.0e})", highlight=False, markup=False)
    console.out.print(f"loss+grad {result.loss_path}  (worst relative error vs torch autograd {worst['loss']:.1e} ≤ {tolerance:.0e})", highlight=False, markup=False)
    console.out.print(f"metadata  {result.metadata_path}", highlight=False, markup=False)


def stylize(
    *, content: str | None, styles: list[str] | None, output: Path, demo: bool, engine: str, provider: str | None,
    model: str, weights: str, size: str | None, iterations: int | None, optimizer: str | None, learning_rate: float,
    content_weight: float, style_weight: float, tv_weight: float, content_layers: str | None, style_layers: str | None,
    style_blend_weights: str | None, style_scale: float, init: str | None, seed: int, original_colors: bool,
    pooling: str, save_every: int, threads: int | None, precision: str | None, cuda_graph: bool, tile: int | None,
    cluster: str | None, scales: str | None, scale_iterations: str | None, max_time: float | None,
) -> None:
    import time

    from onnxstyle.errors import UsageError
    from onnxstyle.images import DEMO_CONTENT, DEMO_STYLE, parse_size
    from onnxstyle.stylize import TIME_BOUND_ITERATIONS, StylizeConfig, default_scales, parse_scales, stylize_scales
    from onnxstyle.sysinfo import seconds_since_start

    started = time.perf_counter() - seconds_since_start()

    if demo:
        content, styles, size = content or DEMO_CONTENT, styles or [DEMO_STYLE], size or str(defaults.DEMO_SIZE)
        if iterations is None and max_time is None:  # with --max-time the budget alone ends the demo, as any run
            iterations = defaults.DEMO_ITERATIONS
        init = init or "content"
    if content is None or not styles:
        raise UsageError("give CONTENT and at least one STYLE image, or --demo")
    warn_threads(threads)
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
    progress, report = stylize_progress(config.iterations)
    try:
        with interrupt_note(f"stylize interrupted while setting up; {kept}"):
            if len(plan) > 1:
                console.err.print(f"multi-resolution: {', '.join(str(scale) for scale in plan)}", highlight=False)
            result = stylize_scales(
                content, styles, output, scales=plan, iterations=scale_iterations or config.iterations, init=init or "random",
                progress=report, config=config, deadline=deadline, announce=lambda line: console.err.print(line, highlight=False, markup=False),
            )
    finally:
        if progress.live.is_started:  # stopping a bar that never started prints an empty line
            progress.stop()
    print_stylized(result)


def bench(
    *, provider: str | None, model: str, sizes: str, precision: str, duration: float, iterations: int | None,
    runs: int, warmup: int, threads: int | None, weights: str, check: bool, out_dir: Path, name: str | None,
    tile: int | None, cuda_graph: bool, interleave: bool, env: list[str] | None, cluster: str | None,
) -> None:
    from onnxstyle.bench.options import bench_options
    from onnxstyle.bench.records import Cell
    from onnxstyle.bench.run import BenchRun, run_bench
    from onnxstyle.report import check_directory, check_stem, new_report
    from onnxstyle.report.run import ReportRun
    from onnxstyle.weights import resolve

    if name:
        check_stem(name)
    request: dict[str, Any] = {
        "provider": provider, "model": model, "sizes": sizes, "precision": precision, "duration": duration, "iterations": iterations,
        "runs": runs, "warmup": warmup, "threads": threads, "weights": weights, "check": check, "tile": tile, "cuda_graph": cuda_graph,
        "interleave": interleave, "environment": env or [],
    }
    if cluster is not None:
        _cluster_bench(request, cluster, out_dir, name)
        return
    options = bench_options(**request)
    check_directory(out_dir)
    warn_threads(threads)
    warn_environment()
    resolved = {spec.name: resolve(weights, spec) for spec in options.models}
    labels = {backbone: chosen.label for backbone, chosen in resolved.items()}
    if any(chosen.weight_set.synthetic for chosen in resolved.values()):
        console.err.print("[yellow]weights: synthetic — timing only (speed is what is measured; images are not meaningful)[/]")
    progress, task, on_progress = bench_progress(len(options.runners) * len(options.models) * len(options.sizes) * len(options.precisions))
    report = new_report([], options.as_dict(), {}, labels, ["onnxstyle", *sys.argv[1:]], False)
    with ReportRun(
        out_dir, name, command="bench", report=report, holder="bench that is still running", on_moved=say_yellow,
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


def cluster_scale(*, size: str, tile: int, overhead_size: int, weights: str, out_dir: Path, name: str) -> None:
    from onnxstyle.cluster.scale import cluster_scale as measure_scale
    from onnxstyle.cluster.scale import scale_request
    from onnxstyle.report import check_directory, check_stem
    from onnxstyle.report.run import ReportRun
    from onnxstyle.report.scale import scale_files, scale_markdown

    request = scale_request(size, core=tile, overhead_size=overhead_size, weights=weights)
    check_directory(out_dir)
    check_stem(name)
    with console.err.status("…") as status:
        table, overhead = measure_scale(request, on_stage=lambda text: status.update(text))
    with ReportRun(out_dir, name, command="cluster-scale", measured_in=lambda path: 0, unit="tables") as run:
        run.save(1, scale_files(table, overhead))
    run.check_written(lost=False)
    console.out.print(scale_markdown(table, overhead), highlight=False, markup=False)
    report_paths(run)


def parity(
    *, provider: str, model: str, sizes: str, precision: str, weights: str, threads: int | None, out_dir: Path,
    name: str | None,
) -> None:
    from onnxstyle.parity import gradient_parity, parity_plan
    from onnxstyle.report import check_directory
    from onnxstyle.report.parity import ParityRow, measured, parity_files, rows_in
    from onnxstyle.report.run import ReportRun
    from onnxstyle.sysinfo import fingerprint

    plan = parity_plan(provider=provider, model=model, sizes=sizes, precision=precision, threads=threads)
    check_directory(out_dir)
    warn_threads(threads)
    warn_environment()
    system = fingerprint()
    rows: list[ParityRow] = []
    with ReportRun(out_dir, name, command="parity", measured_in=rows_in, unit="measured rows", on_failure=say_red) as run:

        def on_row(row: ParityRow) -> None:
            rows.append(row)
            figure = f"{row.status}: {row.error}" if row.status != "ok" else f"gradient {row.grad_error:.1e}, loss {row.loss_error:.1e} ({row.seconds:.1f} s)"
            console.out.print(f"  {row.model:6} {row.width}x{row.height:<5} {row.runner:14} {row.precision:5} {figure}", highlight=False, markup=False)
            run.save(measured(rows), parity_files(rows, system))

        try:
            gradient_parity(plan, weights=weights, threads=threads, on_row=on_row)
        except KeyboardInterrupt:
            raise run.interrupted(f"the {measured(rows)} rows measured so far", "nothing was measured yet") from None
    report_paths(run)
    run.check_written()
    exit_if_unmeasured(rows, "row")


def converge(
    *, sizes: str, seconds: str, configs: str, weights: str, threads: int | None, out_dir: Path, name: str | None, images: Path | None,
) -> None:
    from onnxstyle.bench.options import parse_seconds, parse_square_sizes
    from onnxstyle.converge import default_configs, parse_configs
    from onnxstyle.converge import converge as run_converge
    from onnxstyle.report import check_directory, check_stem, to_rich
    from onnxstyle.report.converge import measured_in, quality_files, quality_table, scored, summary_lines
    from onnxstyle.report.run import ReportRun

    check_directory(out_dir)
    if name:
        check_stem(name)
    size_list, budgets = parse_square_sizes(sizes, "converge"), parse_seconds(seconds)
    warn_threads(threads)
    chosen = parse_configs(configs) if configs else default_configs()
    command = ["onnxstyle", *sys.argv[1:]]
    with ReportRun(
        out_dir, name, command="converge", prefix="quality", measured_in=measured_in, unit="scored configurations",
        on_moved=say_yellow, on_failure=say_red,
    ) as run:

        def save(report: Any) -> None:
            """After every configuration: an interrupted or killed run keeps what it measured, and never replaces a fuller report."""
            report.options["command"] = command
            run.save(scored(report), quality_files(report))

        try:
            with console.err.status("…") as status:
                report = run_converge(
                    configs=chosen, sizes=size_list, seconds=budgets, weights=weights, threads=threads,
                    progress=lambda text: status.update(text), on_update=save, skip_unusable=not configs, images=images,
                )
        except KeyboardInterrupt:
            raise run.interrupted("the configurations measured so far", "nothing was measured yet") from None
    if report.timing_only:
        console.err.print("[yellow]weights: synthetic — losses of synthetic weights say nothing about image quality[/]")
    console.out.print(to_rich(quality_table(report)))
    for line in summary_lines(report):
        console.out.print(line, highlight=False, markup=False)
    report_paths(run)
    run.check_written(lost=False)
    if report.interrupted:
        count = scored(report)
        never = f"; not run: {', '.join(report.not_run)}" if report.not_run else ""
        raise run.interrupted(f"{count} configuration{'' if count == 1 else 's'} measured{never}", f"nothing was written{never}")


def profile(
    *, model: str, size: str, provider: str, runs: int, warmup: int, threads: int | None, weights: str, conv: str,
    top: int,
) -> None:
    from onnxstyle.errors import UsageError
    from onnxstyle.images import parse_size
    from onnxstyle.profiling import parse_conv, profile_loss

    winograd = parse_conv(conv)
    if top <= 0:
        raise UsageError(f"--top must be positive, got {top}")
    side = parse_size(size)
    width, height = side if isinstance(side, tuple) else (side, side)
    warn_threads(threads)
    with console.err.status(Text(f"profiling {model} at {width}x{height} on {provider}…")):
        result = profile_loss(
            model=model, size=(width, height), provider=provider, threads=threads, runs=runs, warmup=warmup, weights=weights,
            winograd=winograd,
        )
    console.out.print(
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
    console.out.print(by_op)
    nodes = Table(title=f"slowest {top} nodes (ms per run)")
    for column in ("node", "operator", "ms"):
        nodes.add_column(column, justify="right" if column == "ms" else "left")
    for node in result.slowest(top):
        nodes.add_row(Text(node.name), node.op_type, f"{node.milliseconds:,.2f}")
    console.out.print(nodes)


def report_show(*, path: Path) -> None:
    from onnxstyle.report import to_rich
    from onnxstyle.report.loading import load_any
    from onnxstyle.report.parity import ParityReport
    from onnxstyle.report.converge import QualityReport, interrupted_line, quality_table, summary_lines
    from onnxstyle.report.scale import ScaleReport

    report = load_any(path)
    if isinstance(report, QualityReport):
        console.out.print(f"machine: {report.system.get('cpu', '?')}; weights {report.weights}; created {report.created}", highlight=False, markup=False)
        if (line := interrupted_line(report)) is not None:
            console.out.print(line, style="yellow", highlight=False, markup=False)
        console.out.print(to_rich(quality_table(report)))
        for line in summary_lines(report):
            console.out.print(line, highlight=False, markup=False)
        return
    if isinstance(report, (ParityReport, ScaleReport)):
        console.out.print(report.to_markdown(), highlight=False, markup=False)
        return
    show_bench(report)


def report_compare(*, paths: list[Path], plot_path: Path, force: bool) -> None:
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
        console.out.print("machines and software: identical fingerprints")
    else:
        console.out.print("[bold]how the machines and software differ[/bold]")
        console.out.print(to_rich(differences))
    baseline = reports[0]
    for other, label in zip(reports[1:], names[1:], strict=True):
        table = ratio_table(baseline, other, names[0], label)
        if not table.rows:
            console.out.print(f"{label}: no cells in common with {names[0]}", highlight=False, markup=False)
        else:
            console.out.print(Text.assemble((f"{label} relative to {names[0]}", "bold"), " (ratio >1 is faster; ± from both runs' spreads)"), highlight=False)
            console.out.print(to_rich(table))
    console.out.print(f"plot {compare_plot(baseline, reports[1:], plot_path)}", highlight=False, markup=False)


def weights_list() -> None:
    from onnxstyle.weights import CATALOGUE, find_cached, synthetic_weight_set

    table = Table(title="weights catalogue")
    for column in ("id", "backbone", "file", "size", "preprocessing", "licence", "cached"):
        table.add_column(column)
    for entry in CATALOGUE.values():
        cached = find_cached(entry)
        table.add_row(entry.id, entry.backbone, entry.filename, entry.size, entry.preprocessing.name, entry.licence, Text(str(cached)) if cached else "no")
    synthetic = synthetic_weight_set("any")
    table.add_row(synthetic.id, synthetic.backbone, "—", "—", synthetic.preprocessing.name, synthetic.licence, "built in (timing only)")
    console.out.print(table)


def weights_where() -> None:
    from onnxstyle.weights import CATALOGUE, search_paths

    for entry in CATALOGUE.values():
        console.out.print(Text.assemble((entry.id, "bold"), f"  {entry.url}"), highlight=False)
        for path in search_paths(entry):
            console.out.print(f"  {path}{'  (present)' if path.is_file() else ''}", highlight=False, markup=False)


def weights_verify(*, ids: list[str] | None) -> None:
    from onnxstyle.errors import WeightsError, WeightsNotFoundError, first_line
    from onnxstyle.weights import CATALOGUE, find_cached, verify

    targets = ids or [entry.id for entry in CATALOGUE.values() if find_cached(entry)]
    if not targets:
        raise WeightsNotFoundError("no weight files are cached, so nothing was verified (see: onnxstyle weights where)")
    failures: list[tuple[str, WeightsError]] = []
    for target in targets:
        try:
            console.out.print(f"ok  {target}: {verify(target)}", highlight=False, markup=False)
        except WeightsError as error:
            failures.append((target, error))
            console.out.print(f"bad {target}: {first_line(error)}", highlight=False, markup=False)
    if failures:
        first_target, first_error = failures[0]
        raise type(first_error)(f"{len(failures)} of {len(targets)} failed verification; the first, {first_target}: {first_line(first_error)}")
