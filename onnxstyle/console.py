"""The terminal: two consoles that never break a line, progress bars, result tables, and errors as one line.

Everything a command prints goes through here, so a log reader sees the same whole lines whichever command
wrote them, and ``cli`` is left with flags and calls.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from onnxstyle.errors import OnnxstyleError

# Rows no log reader will ever scroll to: piped tables are never squeezed, and COLUMNS cannot narrow them.
UNBOUNDED_WIDTH = 1_000_000


def make_console(stderr: bool) -> Console:
    """A console whose messages are never broken into lines: a log line stays greppable and a path stays whole.

    On a terminal, tables fit its width; piped (CI logs, ``| tee``), nothing is wrapped at all, whatever ``COLUMNS`` says.
    """
    stream = sys.stderr if stderr else sys.stdout
    interactive = stream.isatty()
    return Console(stderr=stderr, soft_wrap=True, width=None if interactive else UNBOUNDED_WIDTH)


out = make_console(stderr=False)
err = make_console(stderr=True)


def bench_progress(total: int) -> tuple[Progress, Any, Any]:
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


def stylize_progress(total: int) -> tuple[Progress, Any]:
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


def print_stylized(result: Any) -> None:
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
        f"wrote {result.output}: {result.iterations} iterations in {result.seconds:.1f}s ({pace(result.iterations, result.seconds)}) "
        f"on {result.engine['engine']} [{where}], loss {result.written_losses[0]:.4g} → {result.best_loss:.4g} "
        f"({-100 * result.loss_reduction:+.1f}%), weights {result.weights}{'; ended by --max-time' if result.ended_by == 'time' else ''}",
        highlight=False,
        markup=False,
    )


def warn_threads(threads: int | None) -> None:
    """More threads than CPUs only makes them wait for each other: say so (the library caps them)."""
    from onnxstyle.sysinfo import default_threads

    if threads is not None and threads > default_threads():
        err.print(f"[yellow]--threads {threads} is more than the {default_threads()} CPUs this process may use; using {default_threads()}[/]")


def warn_environment() -> None:
    from onnxstyle.sysinfo import environment_warnings

    for warning in environment_warnings():
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)


def pace(iterations: int, seconds: float) -> str:
    """it/min, or seconds per iteration when that reads better (large images)."""
    rate = 60 * iterations / seconds if seconds > 0 else 0.0
    return f"{rate:,.0f} it/min" if rate >= 10 else f"{seconds / max(iterations, 1):,.1f} s/it"


def report_paths(run: Any) -> None:
    """The files a report run wrote, then the fuller earlier report it left in place, if any."""
    for line in run.path_lines():
        out.print(line, highlight=False, markup=False)
    if run.kept:
        say_yellow(run.kept)


def say_yellow(text: str) -> None:
    err.print(text, style="yellow", highlight=False, markup=False)


def say_red(text: str) -> None:
    err.print(text, style="red", highlight=False, markup=False)


def exit_if_unmeasured(outcomes: list[Any], unit: str) -> None:
    """Nothing measured: the first failure's line, and its exit code (2 when everything was skipped)."""
    from onnxstyle.bench.run import nothing_measured

    if (unmeasured := nothing_measured(outcomes, unit=unit)) is not None:
        err.print("[red]error:[/] ", end="")
        err.print(unmeasured[0], highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(unmeasured[1])


def show_bench(report: object, with_verdict: bool = True) -> None:
    from onnxstyle.report import Report, detail_table, speed_table, system_lines, to_rich

    assert isinstance(report, Report)
    for line in system_lines(report):
        out.print(line, highlight=False, markup=False)
    if report.interrupted:
        out.print("[yellow]interrupted: unfinished cells are marked[/]")
    out.print(to_rich(speed_table(report)))
    out.print(to_rich(detail_table(report)))
    if with_verdict:
        verdict(report)


def verdict(report: object) -> None:
    """The noisy cells with their reasons, then the one line that says whether the numbers can be trusted."""
    from onnxstyle.report import Report, noise_lines, trusted

    assert isinstance(report, Report)
    *noisy, line = noise_lines(report)
    for text in noisy:
        out.print(text, style="yellow", highlight=False, markup=False)
    out.print(line, style="green" if trusted(report) else "bold red", highlight=False, markup=False)


@contextmanager
def interrupt_note(text: str) -> Iterator[None]:
    """A Ctrl-C or SIGTERM inside this block ends the command with ``text``: what it interrupted, and what it kept."""
    from onnxstyle.errors import Interrupted

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(text) from None


def on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C, recorded first, so messages and cell reasons name the signal that came."""
    from onnxstyle.errors import note_interruption

    note_interruption("SIGTERM")
    raise KeyboardInterrupt


def parser_exceptions() -> Any:
    """The exception module of the click that parses our flags: typer ≥ 0.22 carries its own copy, older typer uses click."""
    try:
        from typer._click import exceptions as typer_click_exceptions

        return typer_click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions

        return click_exceptions


def run(app: typer.Typer) -> None:
    """Run ``app`` as the console script: typed errors print one line and exit with their code, never a traceback.

    SIGTERM (a CI timeout, ``kill``) is taken as Ctrl-C: every command keeps what it finished, and the line says which came.
    """
    import signal

    from onnxstyle.errors import Interrupted, interruption, note_interruption

    note_interruption("Ctrl-C")
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    parsing = parser_exceptions()
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
