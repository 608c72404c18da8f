"""What a bench run records, as plain data: windows, cells, GEMM roofs and their statistics.

Kept free of torch and ONNX Runtime so that reading, rendering and comparing reports (``onnxstyle.report``)
starts in a fraction of a second and works where neither is installed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def window_rate(window: Mapping[str, Any]) -> float:
    """A stored window's iterations per minute."""
    return 60.0 * window["iterations"] / window["seconds"]


def half_iqr_share(q1: float, q3: float, median: float) -> float:
    """Half the interquartile range relative to the median: the ± shown beside a median."""
    return (q3 - q1) / 2 / median if median else 0.0


@dataclass
class GemmRate:
    """This machine's measured fp32 matrix-multiply rate: the practical roof for conv-heavy work.

    On CPUs the fastest BLAS differs by vendor (MKL lags on AMD; OpenBLAS or ORT's MLAS may lead), so the
    roof is the best library measured and the others are kept beside it.
    """

    device: str
    size: int
    threads: int
    samples_gflops: list[float]
    library: str = "torch"
    others_gflops: dict[str, float] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return max(self.samples_gflops)


@dataclass
class Stats:
    """Summary of per-window rates (it/min): median with min/max and interquartile range."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float
    stdev: float
    n: int

    @property
    def spread(self) -> float:
        return half_iqr_share(self.q1, self.q3, self.median)


def summarize(values: Sequence[float]) -> Stats:
    if not values:
        raise ValueError("no samples to summarize")
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Stats(
        median=statistics.median(ordered),
        q1=q1,
        q3=q3,
        min=ordered[0],
        max=ordered[-1],
        mean=statistics.fmean(ordered),
        stdev=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        n=len(ordered),
    )


@dataclass
class Window:
    """One timed window as the worker measured it, with what the CPUs did meanwhile (see ``interference``)."""

    iterations: int
    seconds: float
    engine_seconds: float
    round: int = 0  # the pass over a size's runners that timed it: windows of one round share the machine's load
    cpu_seconds: float | None = None  # the timed worker's CPU time, all threads
    busy_seconds: float | None = None  # every process's CPU time on the CPUs the worker may use
    steal_seconds: float | None = None
    load_average: float | None = None
    cpus: int | None = None  # how many CPUs the worker may use (their counters are the ones read)
    bench_cpu_seconds: float | None = None  # the bench's other processes (parent, idle workers), from the parent
    other_cpu_seconds: float | None = None  # everything else: busy − the worker − the bench


@dataclass
class Cell:
    """One runner × model × size × precision measurement, as stored in the JSON report."""

    runner: str
    model: str
    width: int
    height: int
    precision: str = "fp32"
    status: str = "pending"  # ok | skipped | failed | interrupted | not run
    error_code: int | None = None  # a failed cell's exit code (errors.py), which the run exits with if nothing was measured
    reason: str = ""
    tile: int | None = None  # core edge (px) when the cell ran tiled (exact gradient)
    cuda_graph: bool = False  # ORT captured and replayed a CUDA graph of the loss+gradient run
    interleaved: bool = False  # its windows alternated with the other runners' of its size (see run_group)
    engine: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    threads: int | None = None
    thread_counts: dict[str, Any] = field(default_factory=dict)  # what each library ran with in the worker
    environment: dict[str, str] = field(default_factory=dict)  # variables the worker was started with
    inputs_sha256: str = ""  # content and style images as the worker built them: the same for every runner
    setup_seconds: float | None = None
    first_iteration_seconds: float | None = None
    warmup: int = 0
    windows: list[dict[str, Any]] = field(default_factory=list)
    iteration_seconds: list[float] = field(default_factory=list)
    stats: dict[str, float] | None = None
    noisy: bool = False
    noise: list[dict[str, str]] = field(default_factory=list)  # why the figure should not be trusted: {kind, text}
    overhead: float | None = None
    gflop_per_iteration: float | None = None
    gflops: float | None = None
    roof_share: float | None = None
    rss_before_bytes: int | None = None  # the worker's RSS after its imports, before set-up
    peak_rss_bytes: int | None = None  # the worker's peak RSS over set-up, warm-up and windows
    device_peak_bytes: int | None = None  # torch's allocator peak on the GPU (misses ORT's arena)
    device_used_bytes: int | None = None  # GPU memory the worker took, ORT's arena included (see device_memory_source)
    device_memory_source: str | None = None  # "nvml: this process" or "mem_get_info: device-wide delta" (other processes count)
    estimate_bytes: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    check: dict[str, Any] | None = None
    node: str = ""  # the cluster node that measured it (bench --cluster); empty on one machine

    @property
    def label(self) -> str:
        """The runner as a report's rows name it: ``ort-cpu``, or ``ort-cpu@node`` when a cluster ran it."""
        return f"{self.runner}@{self.node}" if self.node else self.runner

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.label, self.model, self.width, self.height, self.precision)

    @property
    def median(self) -> float | None:
        return self.stats["median"] if self.stats else None

    @property
    def spread(self) -> float:
        """The ± beside the median (half the IQR over the median); 0 for an unmeasured cell."""
        return half_iqr_share(self.stats["q1"], self.stats["q3"], self.stats["median"]) if self.stats else 0.0

    def window_rates(self) -> list[float]:
        """Each timed window's it/min, in the order they were timed."""
        return [window_rate(window) for window in self.windows]


@dataclass(frozen=True)
class LoopRecipe:
    """How a worker builds a cell's loop: a factory named by import path, its (picklable) keyword arguments,
    and the size of the built-in content/style pair it receives as ``content`` and ``style``.

    The parent never builds loops; naming the factory lets tests hand a worker a loop that crashes or hangs.
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[int, int] | None = None  # (width, height) of the demo pair; None: the factory takes no images
