"""Was the machine ours while a window was timed? CPU accounting per window, and a verdict per cell.

A busy neighbour does not always show up as spread: when another process takes one of two cores, torch's
spin-waiting OpenMP threads collapse to a steady fraction of their speed (seen: eager NIN 64 px at 78 it/min
±1% instead of ≈3,000), so a quiet-looking median can be badly wrong. Each window therefore records what the
CPUs this process may run on did meanwhile: the timed worker's own CPU time, the bench's other processes
(the parent, idle workers), everything else, and time stolen by the hypervisor. A cell is *noisy* when its
windows spread too far or when something else used the CPUs; the report says so, with the reason.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Thresholds of the verdict. Other processes averaging a quarter of a core over a window take a share of
# a 2-core machine that shows in the figures (a hog on one core: ≈1 CPU), while an idle machine's daemons
# stay near 0.01. Windows of one cell spreading more than 10% (IQR/median) say the rate was not steady.
BUSY_OTHERS_CPUS = 0.25
STEAL_CPUS = 0.1
SPREAD_LIMIT = 0.10


def clock_tick() -> float:
    """The resolution of the kernel's CPU-time counters (1/USER_HZ, 10 ms on Linux)."""
    try:
        return 1.0 / os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 0.01


def resolution_cpus(seconds: float, cpus: int) -> float:
    """How far quantisation alone can move a CPU share measured over ``seconds`` on ``cpus`` counters.

    Each CPU's busy time is read in whole ticks at both ends of the window, so a 35-ms window on two CPUs
    can be off by ±1.1 CPUs, a 1.2-s window (the default bench's) by ±0.03.
    """
    return 2.0 * clock_tick() * cpus / seconds if seconds > 0 else math.inf


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity), which is where a neighbour would get in the way."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class CpuSnapshot:
    """Clocks read at one instant: wall time, this process's CPU time, and the allowed CPUs' busy and stolen time."""

    wall: float
    process: float
    busy: float
    steal: float

    @classmethod
    def take(cls, cpus: Sequence[int]) -> CpuSnapshot:
        import psutil

        per_cpu = psutil.cpu_times(percpu=True)
        chosen = [per_cpu[index] for index in cpus if index < len(per_cpu)] or per_cpu
        busy = sum(times.user + times.system + getattr(times, "nice", 0.0) + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0) for times in chosen)
        steal = sum(getattr(times, "steal", 0.0) for times in chosen)
        return cls(time.perf_counter(), time.process_time(), busy, steal)


@dataclass(frozen=True)
class WindowLoad:
    """What the allowed CPUs did during one window, in CPU-seconds (``other`` is filled in by the parent)."""

    cpu_seconds: float  # the timed worker, all its threads
    busy_seconds: float  # every process on the allowed CPUs, the worker included
    steal_seconds: float  # time the hypervisor ran someone else on those CPUs
    load_average: float | None  # 1-minute load average at the end (slow to react; context only)

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> WindowLoad:
        try:
            load: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        return cls(after.process - before.process, max(0.0, after.busy - before.busy), max(0.0, after.steal - before.steal), load)


def noise_reasons(windows: Sequence[dict[str, float]], rates: Sequence[float]) -> list[dict[str, str]]:
    """Why a cell's figure should not be trusted, as ``{"kind", "text"}`` (empty: it was measured on a quiet machine).

    ``windows`` are the JSON window records (seconds, cpus, other_cpu_seconds, bench_cpu_seconds,
    steal_seconds); ``rates`` their it/min. Kinds: ``spread``, and ``others``, ``bench``, ``steal`` for CPU
    time taken by other processes, the bench's own idle processes, or the hypervisor. A share counts only
    beyond what tick quantisation could explain, so very short windows (``--iterations`` on a fast cell)
    cannot be judged by CPU time; the default windows (≈1.2 s) resolve ≈0.03 CPUs.
    """
    reasons = []
    if len(rates) >= 2:
        q1, _, q3 = statistics.quantiles(sorted(rates), n=4, method="inclusive")
        median = statistics.median(rates)
        spread = (q3 - q1) / median if median else 0.0
        if spread > SPREAD_LIMIT:
            reasons.append({"kind": "spread", "text": f"windows spread {100 * spread:.0f}% (IQR/median > {100 * SPREAD_LIMIT:.0f}%)"})
    for kind, key, limit, what in (
        ("others", "other_cpu_seconds", BUSY_OTHERS_CPUS, "other processes used"),
        ("bench", "bench_cpu_seconds", BUSY_OTHERS_CPUS, "the bench's own idle processes used"),
        ("steal", "steal_seconds", STEAL_CPUS, "the hypervisor stole"),
    ):
        beyond = [
            ((window.get(key) or 0.0) / window["seconds"] - resolution_cpus(window["seconds"], int(window.get("cpus") or 1)), index)
            for index, window in enumerate(windows) if window.get("seconds")
        ]
        if beyond and max(beyond)[0] > limit:
            _, index = max(beyond)
            share = (windows[index].get(key) or 0.0) / windows[index]["seconds"]
            reasons.append({"kind": kind, "text": f"{what} {share:.2f} CPUs during window {index + 1} (limit {limit:g})"})
    return reasons
