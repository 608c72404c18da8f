"""``--engine auto``: the fastest way to run the loop on this machine, measured here rather than assumed.

Every runner that works here (ONNX Runtime providers, plugin EPs such as OpenVINO, torch devices) is a
candidate in each precision it runs, except reduced precisions that no committed ``converge`` run has shown
reaching the fp32 yardstick quality: a faster iteration that ends at a worse picture is not faster. The
candidates are timed once per machine (a warm-up and a few loss+gradient evaluations each, at the run's size
capped at ``PROBE_SIDE``), and the figures are cached by a fingerprint of the machine and its software, in a
file the user can read and delete (``onnxstyle auto``). Under a time budget the winner's probe engine is kept
for the run, so a first run pays set-up only for the candidates that lost; otherwise the run opens a fresh one,
because ONNX Runtime's CPU sessions round differently after other inputs (measured: NIN at 64 px, the sixth of
ten evaluations differed in the seventh digit), and an iteration-bound run must repeat bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxstyle import __version__
from onnxstyle.defaults import PROBE_EVALUATIONS, PROBE_SHARE, PROBE_SIDE
from onnxstyle.engines import Engine, EngineSpec, create_engine
from onnxstyle.errors import OnnxstyleError, ProviderError, UsageError, first_line
from onnxstyle.files import write_atomic
from onnxstyle.images import demo_pair
from onnxstyle.ort_providers import CUDA_TARGETS, ort_info
from onnxstyle.runners import Runner, runner_status, select_runners
from onnxstyle.precision import supported, why_not
from onnxstyle.sysinfo import cpu_model, default_threads, release_memory

CACHE_VARIABLE = "ONNXSTYLE_CACHE_DIR"
CACHE_FILE = "auto.json"
CACHE_SCHEMA = "onnxstyle.auto"

# Reduced precisions that a committed converge run showed ending at an fp32 yardstick loss no worse than the
# best fp32 configuration's at the same size and wall time (tests/test_auto.py checks each against its report).
# Anything else in reduced precision is faster per iteration but unproven per picture, so auto leaves it out.
REDUCED_PRECISION_QUALITY: dict[tuple[str, str], str] = {
    ("torch", "bf16"): "reports/quality-512-cpu.json",
}
# The optimiser of the configuration that reached the eager loop's final quality soonest in the committed 512-px
# converge reference (tests/test_auto.py checks it): L-BFGS with the strong-Wolfe line search.
AUTO_OPTIMIZER = "lbfgs"


@dataclass(frozen=True)
class Candidate:
    """A runner in one precision: what auto compares."""

    runner: Runner
    precision: str

    @property
    def label(self) -> str:
        return f"{self.runner.label} {self.precision}"


@dataclass
class Choice:
    """What auto chose, the one line that says why, and (when it was just probed) the winner's engine, ready to run."""

    candidate: Candidate
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)  # candidate label → seconds per evaluation
    engine: Engine | None = None

    @property
    def engine_name(self) -> str:
        return self.candidate.runner.engine

    @property
    def provider(self) -> str:
        return self.candidate.runner.target

    @property
    def precision(self) -> str:
        return self.candidate.precision


def cache_path() -> Path:
    """``$ONNXSTYLE_CACHE_DIR/auto.json``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``: the user's to read and delete."""
    explicit = os.environ.get(CACHE_VARIABLE, "").strip()
    if explicit:
        return Path(explicit) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "onnxstyle" / CACHE_FILE


def machine() -> dict[str, Any]:
    """What a speed measurement depends on: the CPU and the CPUs we may use, the GPUs, and every runtime's version."""
    import torch

    from onnxstyle.plugin_eps import KNOWN, installed_version

    build = ort_info()
    return {
        "cpu": cpu_model(), "cpus": default_threads(), "machine": platform.machine(),
        "gpu": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
        "torch": torch.__version__, "onnxruntime": f"{build['package']} {build['version']}",
        "plugin_eps": {key: installed_version(ep) for key, ep in KNOWN.items()},
        "onnxstyle": __version__,
    }


def machine_key(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def entry_key(facts: dict[str, Any], spec: EngineSpec, side: int, threads: int) -> str:
    """One cache entry per machine, backbone, layer set, pooling, probe size and thread count."""
    layers = ",".join(spec.layers)
    return f"{machine_key(facts)}/{spec.backbone.name}/{spec.pooling}/{layers}/{side}px/{threads}t"


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """The cached measurements; a missing, unreadable or foreign file is an empty cache (it is only ever a shortcut)."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(entries: dict[str, Any], path: Path | None = None) -> Path | None:
    """Atomically, with normal permissions; a cache that cannot be written costs the next run a probe, nothing more."""
    path = path or cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps({"schema": CACHE_SCHEMA, "entries": entries}, indent=1) + "\n")
    except (OSError, OnnxstyleError):
        return None


def clear_cache(path: Path | None = None) -> bool:
    """Delete the cache file; whether there was one."""
    path = path or cache_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def quality_proven(engine: str, precision: str) -> bool:
    return precision == "fp32" or (engine, precision) in REDUCED_PRECISION_QUALITY


def candidates(*, provider: str | None = None, precision: str | None = None, cuda_graph: bool = False) -> tuple[list[Candidate], list[str]]:
    """(what auto compares, a note per runner or precision it left out and why).

    ``provider`` keeps the ORT provider and the torch device of that name; ``precision`` keeps only that
    precision (then a reduced precision needs no converge evidence: the user asked for it).
    """
    if provider is not None:
        runners = _runners_named(provider)
    else:
        runners = [runner for runner in select_runners(None)[0] if runner.engine != "eager"]
    usable = ", ".join(runner.label for runner in runners) or "none"
    if cuda_graph:
        runners = [runner for runner in runners if runner.engine == "onnxruntime" and runner.target in CUDA_TARGETS]
        if not runners:
            raise UsageError(f"--cuda-graph needs ONNX Runtime on cuda or tensorrt, and neither runs here (usable: {usable})")
    chosen: list[Candidate] = []
    left_out: list[str] = []
    for runner in runners:
        allowed, _ = supported(runner.engine, runner.target)
        for option in (precision,) if precision else allowed:
            if option not in allowed:
                continue
            if precision is None and not quality_proven(runner.engine, option):
                left_out.append(f"{runner.label} {option} (no converge run shows it reaching fp32 quality)")
                continue
            chosen.append(Candidate(runner, option))
    if not chosen:
        offers = "; ".join(
            f"{runner.label} runs {', '.join(supported(runner.engine, runner.target)[0])} ({why_not(runner.engine, runner.target, str(precision))})"
            for runner in runners
        )
        raise UsageError(f"no runner here runs {precision}: {offers}")
    return chosen, left_out


def _runners_named(provider: str) -> list[Runner]:
    """The ORT provider and the torch device called ``provider`` that work here; neither is a ProviderError with ORT's reason."""
    from onnxstyle.runners import parse_runner

    named = [parse_runner(provider)]
    if provider.strip().lower() in ("cpu", "cuda"):
        named.append(Runner("torch", provider.strip().lower()))
    usable = [runner for runner in named if runner_status(runner) is None]
    if not usable:
        raise ProviderError(f"{named[0].label} is not usable here: {runner_status(named[0])}")
    return usable


def probe(candidate: Candidate, spec: EngineSpec, side: int, threads: int, clock: Callable[[], float] = time.perf_counter) -> tuple[float, Engine]:
    """Seconds per loss+gradient evaluation of ``candidate`` at ``side`` px (the best of a few, after a warm-up), and its engine."""
    runner = candidate.runner
    engine = create_engine(runner.engine, spec, provider=runner.target, threads=threads, sizes=[(side, side)], precision=candidate.precision)
    content, style = demo_pair(side, side)
    engine.set_targets(engine.build_targets(content, [style], [1.0], spec.loss_weights()))
    image = content.to(engine.device)
    engine.loss_and_grad(image)  # first-run costs: allocations, kernel and algorithm choice
    times = []
    for _ in range(PROBE_EVALUATIONS):
        started = clock()
        engine.loss_and_grad(image)
        times.append(clock() - started)
    return min(times), engine


def choose(
    spec: EngineSpec,
    side: int,
    *,
    provider: str | None = None,
    precision: str | None = None,
    cuda_graph: bool = False,
    threads: int | None = None,
    budget: float | None = None,
    optimizer: str = AUTO_OPTIMIZER,
    cache: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Choice:
    """The fastest candidate for ``spec`` at ``side`` px (the run's largest scale), from the cache or measured now.

    ``budget`` (the run's ``--max-time``) caps the probe at ``PROBE_SHARE`` of it: candidates not reached in
    time are left out and the line says so. A candidate whose probe fails is left out with its reason.
    """
    threads = min(threads or default_threads(), default_threads())
    found, left_out = candidates(provider=provider, precision=precision, cuda_graph=cuda_graph)
    if len(found) == 1:
        only = found[0]
        return Choice(only, _line(only, optimizer, "the only candidate here", left_out))
    probe_side = min(side, PROBE_SIDE)
    facts = machine()
    key = entry_key(facts, spec, probe_side, threads)
    entries = read_cache(cache)
    entry = entries.get(key) or {}
    cached, broken = dict(entry.get("seconds") or {}), dict(entry.get("failed") or {})
    seconds = {candidate.label: float(cached[candidate.label]) for candidate in found if _is_duration(cached.get(candidate.label))}
    failed = {candidate.label: str(broken[candidate.label]) for candidate in found if candidate.label in broken and candidate.label not in seconds}
    kept: tuple[str, Engine] | None = None  # under a budget, the fastest probe's engine, to run with
    started = clock()
    # Accelerators first: under a budget, the probe reaches the likely winners before it runs out.
    missing = sorted(
        (candidate for candidate in found if candidate.label not in seconds and candidate.label not in failed),
        key=lambda candidate: candidate.runner.device == "cpu",
    )
    unprobed: list[str] = []
    for index, candidate in enumerate(missing):
        if budget is not None and index and clock() - started > PROBE_SHARE * budget:
            unprobed = [f"{other.label} (not probed: --max-time leaves {PROBE_SHARE:.0%} of itself to probing)" for other in missing[index:]]
            break
        try:
            seconds[candidate.label], engine = probe(candidate, spec, probe_side, threads, clock)
        except (OnnxstyleError, RuntimeError, MemoryError) as error:
            failed[candidate.label] = first_line(error)
            continue
        if budget is not None and (kept is None or seconds[candidate.label] < seconds[kept[0]]):
            kept = (candidate.label, engine)
        del engine
    release_memory()  # what the losing probes held goes back, so the run's memory estimates see it free
    notes = [*left_out, *(f"{label} (its probe failed: {reason})" for label, reason in failed.items()), *unprobed]
    if not seconds:
        raise ProviderError(f"--engine auto: every candidate failed its probe: {'; '.join(notes)}; name --engine and --provider")
    if len(missing) > len(unprobed):
        entries[key] = {
            "machine": facts, "side": probe_side, "threads": threads, "seconds": seconds, "failed": failed,
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        written = _write_cache(entries, cache)
        source = f"measured now, cached in {written}" if written else "measured now (the cache could not be written)"
    else:
        source = f"cached in {cache or cache_path()}"
    by_label = {candidate.label: candidate for candidate in found}
    best = min(seconds, key=lambda label: seconds[label])
    why = f"fastest at {probe_side} px of {_figures(seconds)} ({source})"
    winner = by_label[best]
    return Choice(winner, _line(winner, optimizer, why, notes), seconds, kept[1] if kept is not None and kept[0] == best else None)


def _is_duration(value: Any) -> bool:
    """A cached figure worth trusting: a finite positive number (an edited or damaged cache is only ever a probe away)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _figures(seconds: dict[str, Any]) -> str:
    """``ort-cpu fp32 412 ms/it, torch-cpu fp32 731 ms/it``: fastest first (anything not a duration is dropped)."""
    usable = {label: value for label, value in seconds.items() if _is_duration(value)}
    return ", ".join(f"{label} {_duration(value)}/it" for label, value in sorted(usable.items(), key=lambda item: item[1]))


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{1000 * seconds:.3g} ms"


def _line(candidate: Candidate, optimizer: str, why: str, left_out: Sequence[str]) -> str:
    skipped = f"; left out: {', '.join(left_out)}" if left_out else ""
    return f"auto: {candidate.label} {optimizer} — {why}{skipped}"


def cache_lines(path: Path | None = None) -> list[str]:
    """``onnxstyle auto``: where the cache is and what it holds, one line per measurement."""
    path = path or cache_path()
    entries = read_cache(path)
    if not entries:
        return [f"cache: {path} (empty: the next --engine auto run measures the candidates)"]
    count = f"{len(entries)} measurement{'s' if len(entries) != 1 else ''}"
    lines = [f"cache: {path} ({count}; delete it or run onnxstyle auto --clear to measure again)"]
    for key, entry in sorted(entries.items()):
        facts = entry.get("machine") or {}
        backbone = key.split("/")[1] if key.count("/") else "?"
        lines.append(
            f"{backbone} at {entry.get('side', '?')} px, {entry.get('threads', '?')} threads on {facts.get('cpu', '?')} "
            f"({entry.get('measured', '?')}): {_figures(entry.get('seconds') or {})}"
        )
    return lines
