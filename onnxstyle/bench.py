"""How fast does the style loop run here? Iterations per minute by runner × model × size × precision.

Method (REFERENCE §7, hyperfine/torch.utils.benchmark style): one iteration is one Adam step
including loss and gradient; setup (graph build, session creation, engine build, targets) and the
first iteration are timed apart; then warm-up iterations; then several timed windows, each closed by
a device synchronisation. A cell reports the median of its windows' it/min with min/max and IQR,
keeps every per-iteration time, the loop overhead (share of an iteration outside loss+gradient),
its worker's peak RSS, achieved GFLOP/s against this machine's measured fp32 GEMM rate, and a
gradient check against torch autograd at a small size. A cell that would not fit in free memory
is skipped with the estimate, never attempted.

Every runner is measured in a worker process of its own (``onnxstyle.workers``), so thread pools,
precision flags and allocators belong to one runner by construction; the GEMM roof gets a worker too.
Each window also records what else used the CPUs (``onnxstyle.interference``), and a cell whose
windows spread or that shared the machine is marked noisy, with the reason.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from onnxstyle.backbones import BackboneSpec, get_backbone
from onnxstyle.engines import Engine, EngineSpec, create_engine
from onnxstyle.errors import NumericalError, OnnxstyleError, ProviderError, UsageError, WorkerError
from onnxstyle.images import demo_content, demo_style, parse_size, to_tensor
from onnxstyle.losses import LossWeights
from onnxstyle.precision import GRADIENT_TOLERANCES, PRECISIONS, supported, why_not
from onnxstyle.sysinfo import default_threads
from onnxstyle.weights import ResolvedWeights, resolve

DEFAULT_SIZES = "64,128,256"
DEFAULT_MODELS = "vgg19,nin"
CHECK_SIZE = 64
LOSS_TOLERANCES = {"fp32": 1e-4, "tf32": 1e-3, "bf16": 2e-2, "fp16": 1e-2}
# ReLU/max-pool gradients jump at kinks, and two fp32 runtimes may decide a near-kink differently,
# so whole-gradient agreement is ~1e-6 typically but up to ~1e-2 (exact parity of the arithmetic is
# proven at export with shared decisions, 1e-4). These bounds catch wrong gradients, not rounding;
# reduced precisions get theirs from onnxstyle.precision.
LEARNING_RATE = 0.02


# ---------------------------------------------------------------- runners


@dataclass(frozen=True)
class Runner:
    """What runs the loop: our engines on an ORT provider or torch device, or the plain eager loop."""

    engine: str  # onnxruntime | torch | eager
    target: str  # ORT provider short name, or torch device

    @property
    def label(self) -> str:
        return f"{'ort' if self.engine == 'onnxruntime' else self.engine}-{self.target}"

    @property
    def on_gpu(self) -> bool:
        return self.target not in ("cpu", "openvino", "xnnpack")

    @property
    def device(self) -> str:
        """The torch device the loop's tensors live on."""
        return "cuda" if self.target in ("cuda", "tensorrt") else "cpu"


def parse_runner(text: str) -> Runner:
    """``cpu``/``cuda``/``tensorrt`` (ONNX Runtime providers), ``ort-cpu``, ``torch``, ``torch-cuda``, ``eager``…"""
    from onnxstyle.providers import canonical, short_name

    name = text.strip().replace(":", "-")
    if not name:
        raise UsageError("empty provider name in --provider")
    head, _, tail = name.lower().partition("-")
    if head in ("torch", "eager"):
        if tail not in ("", "cpu", "cuda"):
            raise UsageError(f"unknown {head} device '{tail}' in --provider; use {head}, {head}-cpu or {head}-cuda")
        return Runner(head, tail or "cpu")
    if head in ("ort", "onnxruntime"):
        name = name.partition("-")[2] or "cpu"
    try:
        return Runner("onnxruntime", short_name(canonical(name)))
    except UsageError:
        raise UsageError(
            f"unknown provider '{text}'; use ONNX Runtime providers (cpu, cuda, tensorrt, …, or ort-NAME), "
            "torch, torch-cuda, eager, eager-cuda, or all"
        ) from None


def runner_status(runner: Runner) -> str | None:
    """Why ``runner`` cannot run here, or ``None`` when it can (ORT providers are probed for real)."""
    if runner.engine in ("torch", "eager"):
        if runner.target == "cuda" and not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
        return None
    from onnxstyle.providers import canonical, probe_providers

    provider = canonical(runner.target)
    for status in probe_providers():
        if status.name == provider:
            return None if status.usable else status.reason
    return f"{provider} is not in this onnxruntime build"


def all_runners() -> list[Runner]:
    """Every runner this installation knows about, usable or not."""
    import onnxruntime as ort

    from onnxstyle.providers import short_name

    runners = [Runner("onnxruntime", short_name(name)) for name in ort.get_available_providers()]
    runners += [Runner(engine, device) for engine in ("torch", "eager") for device in ("cpu", "cuda")]
    return runners


def select_runners(text: str | None) -> tuple[list[Runner], dict[Runner, str]]:
    """(runners to measure, runners skipped with their reason).

    No option: every usable runner, silently leaving the rest out. ``all``: every known runner,
    unusable ones reported as skipped. An explicit list: an unusable runner is an error.
    """
    if text is None or text.strip().lower() == "all":
        usable: list[Runner] = []
        skipped: dict[Runner, str] = {}
        for runner in all_runners():
            reason = runner_status(runner)
            if reason is None:
                usable.append(runner)
            else:
                skipped[runner] = reason
        return usable, (skipped if text is not None else {})
    runners = list(dict.fromkeys(parse_runner(item) for item in text.split(",")))
    for runner in runners:
        reason = runner_status(runner)
        if reason is not None:
            raise ProviderError(f"{runner.label} is not usable here: {reason}")
    return runners, {}


def parse_models(text: str) -> list[BackboneSpec]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError("empty model name in --model; use vgg19 and/or nin")
    return list({spec.name: spec for spec in (get_backbone(name) for name in names)}.values())


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``64,128,1920x1080`` → [(64, 64), (128, 128), (1920, 1080)] as (width, height)."""
    items = [item.strip() for item in text.split(",")]
    if not items or not all(items):
        raise UsageError(f"--sizes needs a comma-separated list like 64,128,256 or 1920x1080, got '{text}'")
    sizes = []
    for item in items:
        size = parse_size(item)
        sizes.append(size if isinstance(size, tuple) else (size, size))
    return list(dict.fromkeys(sizes))


def parse_precisions(text: str) -> list[str]:
    precisions = [item.strip().lower() for item in text.split(",")]
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{precision}' in --precision; supported: {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(precisions))


def precision_support(runner: Runner, precision: str) -> str | None:
    """None when ``runner`` can run ``precision`` here, else the one-line reason."""
    allowed, _ = supported(runner.engine, runner.target)
    return None if precision in allowed else f"{precision} not supported ({'/'.join(allowed)} only)"


def check_precisions(runners: Sequence[Runner], precisions: Sequence[str]) -> None:
    """A precision no selected runner can run is a usage error, not a table of skipped cells."""
    for precision in precisions:
        if runners and all(precision_support(runner, precision) for runner in runners):
            first = runners[0]
            allowed, _ = supported(first.engine, first.target)
            reason = why_not(first.engine, first.target, precision)
            able = sorted({runner.label for runner in all_runners() if not runner_status(runner) and not precision_support(runner, precision)})
            hint = f"runners that can: {', '.join(able)}" if able else "no runner here can"
            raise UsageError(
                f"no selected runner can run {precision}: {first.label} supports {', '.join(allowed)} ({reason}); {hint}"
            )


# ---------------------------------------------------------------- work and memory models


def forward_flops(backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> float:
    """Convolution FLOPs (2 per multiply-add) of the truncated network's forward pass."""
    total = 0.0
    for layer in backbone.truncated(layers):
        if layer.kind != "conv":
            continue
        shape = backbone.feature_shape(layer.name, height, width)
        if shape is None:
            raise UsageError(f"{width}x{height} is too small for {backbone.name} up to {layer.name}")
        channels, rows, cols = shape
        total += 2.0 * layer.in_channels * channels * layer.kernel * layer.kernel * rows * cols
    return total


def iteration_flops(backbone: BackboneSpec, content_layers: Sequence[str], style_layers: Sequence[str], width: int, height: int) -> float:
    """FLOPs of one loss+gradient: convolutions forward and adjoint, Gram products forward and adjoint.

    Elementwise work (ReLU, pooling, masks) is left out: it is memory-bound and small, so GFLOP/s
    here means useful arithmetic, comparable across runners that compute the same thing.
    """
    grams = 0.0
    for name in style_layers:
        shape = backbone.feature_shape(name, height, width)
        assert shape is not None
        channels, rows, cols = shape
        grams += 2.0 * channels * channels * rows * cols
    return 2.0 * forward_flops(backbone, [*content_layers, *style_layers], width, height) + 2.0 * grams


def activation_bytes(backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> int:
    """Bytes of every layer output of the truncated network for one fp32 image."""
    total = 3 * width * height * 4
    for layer in backbone.truncated(layers):
        if layer.kind == "dropout":
            continue
        shape = backbone.feature_shape(layer.name, height, width)
        assert shape is not None
        total += math.prod(shape) * 4
    return total


@dataclass(frozen=True)
class MemoryModel:
    """Peak RSS a cell adds: ``per_activation_byte`` × forward activations + ``fixed_bytes`` (weights, sessions)."""

    per_activation_byte: float
    fixed_bytes: int


# Fitted to peak-RSS growth measured by `onnxstyle bench` at 512 and 1024 px on the project's machine
# (VGG19: ORT 0.99/3.62 GB, torch 0.86/2.86, eager 0.74/2.08; NIN: ORT 0.39/0.55, torch 0.20/0.62,
# eager 0.22/0.61), rounded up by ≈10%. Unknown backbones take the larger of the two. VGG19 on ORT's CPU
# provider since its Winograd layers: 1.62/4.06 GB (their pre-transformed weights are 4× the 3×3 ones).
MEMORY_MODELS: dict[tuple[str, str], MemoryModel] = {
    ("vgg19", "onnxruntime"): MemoryModel(1.5, 900 * 2**20),
    ("vgg19", "torch"): MemoryModel(1.15, 250 * 2**20),
    ("vgg19", "eager"): MemoryModel(1.15, 300 * 2**20),
    ("nin", "onnxruntime"): MemoryModel(1.5, 400 * 2**20),
    ("nin", "torch"): MemoryModel(2.0, 100 * 2**20),
    ("nin", "eager"): MemoryModel(2.0, 300 * 2**20),
}


def memory_model(backbone: str, engine: str) -> MemoryModel:
    known = MEMORY_MODELS.get((backbone, engine))
    if known is not None:
        return known
    fits = [model for (name, kind), model in MEMORY_MODELS.items() if kind == engine]
    return MemoryModel(max(fit.per_activation_byte for fit in fits), max(fit.fixed_bytes for fit in fits))


def estimate_bytes(runner: Runner, backbone: BackboneSpec, layers: Sequence[str], width: int, height: int) -> int:
    """What one cell is expected to add to this process's peak memory, from the measured fits above."""
    model = memory_model(backbone.name, runner.engine)
    return int(model.per_activation_byte * activation_bytes(backbone, layers, width, height) + model.fixed_bytes)


# Libraries reserve more address space than they touch: VGG19 on ORT's CPU provider at 512 px ran under an
# address-space limit (ulimit -v) of 2.67 GiB and failed under 2.48 GiB, from 0.66 GiB after imports, for
# 1.6 GiB of estimated growth: ≈1.25 bytes of address space per byte the memory model counts.
ADDRESS_SPACE_PER_BYTE = 1.25


def free_bytes(runner: Runner) -> int:
    """Memory a new cell can use: available RAM, or free device memory for GPU runners.

    Under an address-space limit (``ulimit -v``), what the limit leaves counts too: past it, allocations
    fail inside ONNX Runtime's graph building and the process dies instead of saying what it needs.
    """
    if runner.device == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return min(int(psutil.virtual_memory().available), address_space_left())


def address_space_left() -> int:
    """Bytes the address-space limit leaves for growth, in the memory model's terms (unlimited: a huge number)."""
    try:
        import resource
    except ImportError:
        return 2**62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return 2**62
    import psutil

    used = psutil.Process().memory_info().vms
    return max(0, int((soft - used) / ADDRESS_SPACE_PER_BYTE))


# ---------------------------------------------------------------- GEMM roof


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


def _best_of(run: Callable[[], object], flop: float, repeats: int, synchronize: Callable[[], None]) -> list[float]:
    run()
    samples = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        run()
        synchronize()
        samples.append(flop / (time.perf_counter() - started) / 1e9)
    return samples


def _ort_matmul(size: int, threads: int) -> Callable[[np.ndarray, np.ndarray], object]:
    """One MatMul node on ONNX Runtime's CPU provider (MLAS), the library our CPU graphs run on."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def square(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size])

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [square("a"), square("b")], [square("c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda a, b: session.run(None, {"a": a, "b": b})


def measure_gemm(device: str = "cpu", size: int = 2048, repeats: int = 7, threads: int | None = None) -> GemmRate:
    """Best-of-``repeats`` square SGEMM: on CPU through torch, numpy and ONNX Runtime; on GPU cuBLAS, TF32 off."""
    if threads is not None:
        torch.set_num_threads(threads)
    target = torch.device(device)
    if target.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(target)
    b = torch.randn(size, size, generator=generator).to(target)
    flop = 2.0 * size**3
    threads = torch.get_num_threads()
    rates = {"torch": _best_of(lambda: torch.matmul(a, b), flop, repeats, lambda: _synchronize(device))}
    if target.type == "cpu":
        a_array, b_array = a.numpy(), b.numpy()
        rates["numpy"] = _best_of(lambda: a_array @ b_array, flop, repeats, lambda: None)
        try:
            matmul = _ort_matmul(size, threads)
            rates["onnxruntime"] = _best_of(lambda: matmul(a_array, b_array), flop, repeats, lambda: None)
        except Exception:  # noqa: BLE001 - the roof stays measured by the others
            pass
    library = max(rates, key=lambda name: max(rates[name]))
    others = {name: max(samples) for name, samples in rates.items() if name != library}
    return GemmRate(device, size, threads, rates[library], library, others)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- statistics


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
        """Half the IQR relative to the median: the ± shown beside a median."""
        return (self.q3 - self.q1) / 2 / self.median if self.median else 0.0


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


# ---------------------------------------------------------------- the loop under test


class Loop(Protocol):
    engine_seconds: float

    def step(self) -> float: ...

    def describe(self) -> dict[str, object]: ...


class EngineLoop:
    """Adam on a leaf tensor whose gradient one of our engines computes (the stylize loop's shape)."""

    def __init__(self, engine: Engine, start: torch.Tensor, learning_rate: float = LEARNING_RATE) -> None:
        self.engine = engine
        self.pixels = start.detach().clone().to(engine.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.pixels], lr=learning_rate)
        self.engine_seconds = 0.0

    def step(self) -> float:
        started = time.perf_counter()
        terms, grad = self.engine.loss_and_grad(self.pixels.detach())
        self.engine_seconds += time.perf_counter() - started
        self.pixels.grad = grad
        self.optimizer.step()
        return terms.total

    def describe(self) -> dict[str, object]:
        return self.engine.describe()


def demo_pair(width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The built-in content and style images at exactly width×height."""
    side = max(width, height)
    content = demo_content(side).resize((width, height))
    style = demo_style(side).resize((width, height))
    return to_tensor(content), to_tensor(style)


def loss_weights(backbone: BackboneSpec) -> LossWeights:
    """neural-style defaults: content 5, style 100 per layer, TV 1e-3."""
    return LossWeights((5.0,) * len(backbone.default_content_layers), (100.0,) * len(backbone.default_style_layers), 1e-3)


def engine_spec(backbone: BackboneSpec, weights: ResolvedWeights) -> EngineSpec:
    return EngineSpec(backbone, tuple(backbone.default_content_layers), tuple(backbone.default_style_layers), "max", weights)


def cell_tile(runner: Runner, spec: EngineSpec, width: int, height: int, tile: int | None, available: int) -> int | None:
    """The tile core for a cell: as asked, or automatic when it would not fit untiled (the eager loop never tiles).

    The one rule for ``bench`` and ``stylize``: what runs untiled must fit in ``available`` bytes and what
    tiles must fit tiled (``tiling.choose_tile``); otherwise a UsageError says how much it needs.
    """
    from onnxstyle.tiling import check_tile, choose_tile

    if tile == 0 or runner.engine == "eager":
        need = estimate_bytes(runner, spec.backbone, spec.layers, width, height)
        if need > 0.9 * available:
            raise UsageError(f"needs ≈{need / 2**30:.1f} GB, {available / 2**30:.1f} GB free")
        return None
    if tile is not None:
        check_tile(spec.backbone, spec.layers, tile)
        return tile
    return choose_tile(spec, runner.engine, height, width, available)


def takes_cuda_graph(runner: Runner) -> bool:
    from onnxstyle.providers import CUDA_GRAPH_PROVIDERS, canonical

    return runner.engine == "onnxruntime" and canonical(runner.target) in CUDA_GRAPH_PROVIDERS


def build_loop(
    runner: Runner,
    spec: EngineSpec,
    content: torch.Tensor,
    style: torch.Tensor,
    threads: int | None,
    precision: str = "fp32",
    tile: int | None = None,
    cuda_graph: bool = False,
) -> Loop:
    """Everything a cell's setup time covers: graphs, sessions, weights on the device, targets."""
    height, width = content.shape[2:]
    weights = loss_weights(spec.backbone)
    if runner.engine == "eager":
        from onnxstyle.engines.eager import EagerLoop

        return EagerLoop(
            spec, content, style, weights, device=runner.target, threads=threads, learning_rate=LEARNING_RATE, precision=precision
        )
    engine = create_engine(
        runner.engine, spec, provider=runner.target, threads=threads, sizes=[(height, width)], precision=precision, tile=tile,
        cuda_graph=cuda_graph,
    )
    engine.set_targets(engine.build_targets(content, [style], [1.0], weights))
    return EngineLoop(engine, content)


def check_gradient(runner: Runner, spec: EngineSpec, threads: int | None, precision: str = "fp32") -> dict[str, object]:
    """Loss and gradient of ``runner`` at ``precision`` against torch autograd (CPU, fp32) on the same small problem."""
    from onnxstyle.engines.torch_engine import TorchEngine
    from onnxstyle.exporters.export import relative_error

    side = max(CHECK_SIZE, spec.backbone.min_size(spec.layers))
    content, style = demo_pair(side, side)
    weights = loss_weights(spec.backbone)
    image = (content * 0.8 + style * 0.2).clamp(0, 1)
    reference = TorchEngine(spec, "cpu", threads=threads)
    targets = reference.build_targets(content, [style], [1.0], weights)
    reference.set_targets(targets)
    expected_terms, expected_grad = reference.loss_and_grad(image)
    if runner.engine == "eager":
        from onnxstyle.engines.eager import EagerLoop

        eager = EagerLoop(spec, content, style, weights, device=runner.target, threads=threads, precision=precision)
        loss, grad = eager.loss_and_grad(image)
    else:
        engine = create_engine(runner.engine, spec, provider=runner.target, threads=threads, sizes=[(side, side)], precision=precision)
        engine.set_targets(targets)
        terms, grad = engine.loss_and_grad(image.to(engine.device))
        loss = terms.total
    loss_error = abs(loss - expected_terms.total) / abs(expected_terms.total)
    grad_error = relative_error(grad.detach().cpu().numpy(), expected_grad.numpy())
    return {
        "size": [side, side],
        "precision": precision,
        "reference": "torch autograd, cpu, fp32",
        "loss_error": loss_error,
        "grad_error": grad_error,
        "loss_tolerance": LOSS_TOLERANCES[precision],
        "grad_tolerance": GRADIENT_TOLERANCES[precision],
        "ok": loss_error <= LOSS_TOLERANCES[precision] and grad_error <= GRADIENT_TOLERANCES[precision],
    }


# ---------------------------------------------------------------- cells


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

    @property
    def per_minute(self) -> float:
        return 60.0 * self.iterations / self.seconds


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
    device_used_bytes: int | None = None  # device-wide memory the worker took (mem_get_info delta), ORT included
    estimate_bytes: int | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    check: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str, int, int, str]:
        return (self.runner, self.model, self.width, self.height, self.precision)

    @property
    def median(self) -> float | None:
        return self.stats["median"] if self.stats else None


@dataclass
class BenchOptions:
    runners: list[Runner]
    models: list[BackboneSpec]
    sizes: list[tuple[int, int]]
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    duration: float | None = 6.0
    iterations: int | None = None
    runs: int = 5
    warmup: int = 3
    threads: int | None = None
    weights: str = "auto"
    check: bool = True
    skipped: dict[Runner, str] = field(default_factory=dict)
    tile: int | None = None  # None: tile only cells that would not fit; 0: never; N: always, cores of N px
    cuda_graph: bool = False  # for ORT runners on cuda/tensorrt (others run as usual)
    interleave: bool = True  # time a size's runners in alternating windows where they fit in memory together
    environment: dict[str, str] = field(default_factory=dict)  # set in every worker before it starts (--env)
    hang_seconds: float = 300.0  # the least a worker may stay silent before it is declared hung

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations <= 0:
            raise UsageError(f"--iterations must be positive, got {self.iterations}")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise UsageError(f"--duration must be a positive number of seconds, got {self.duration}")
        if self.runs <= 0:
            raise UsageError(f"--runs must be positive, got {self.runs}")
        if self.warmup < 0:
            raise UsageError(f"--warmup cannot be negative, got {self.warmup}")
        if self.threads is not None and self.threads <= 0:
            raise UsageError(f"--threads must be positive, got {self.threads}")
        if self.tile is not None and self.tile < 0:
            raise UsageError(f"--tile must be positive (or 0 for never), got {self.tile}")
        if not self.hang_seconds > 0:
            raise UsageError(f"the hang timeout must be positive, got {self.hang_seconds}")
        for width, height in self.sizes:
            if width <= 0 or height <= 0:
                raise UsageError(f"sizes must be positive, got {width}x{height}")

    def as_dict(self) -> dict[str, object]:
        return {
            "runners": [runner.label for runner in self.runners],
            "models": [model.name for model in self.models],
            "sizes": [f"{w}x{h}" for w, h in self.sizes],
            "precisions": self.precisions,
            "duration": self.duration if self.iterations is None else None,
            "iterations": self.iterations,
            "runs": self.runs,
            "warmup": self.warmup,
            "threads": self.threads,
            "weights": self.weights,
            "check": self.check,
            "tile": "auto" if self.tile is None else self.tile,
            "interleave": self.interleave,
            "isolation": "one worker process per runner",
            "environment": self.environment,
            "optimizer": f"adam lr={LEARNING_RATE}",
            "init": "content image",
        }


def parse_environment(items: Sequence[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` (repeatable) → a dict; a malformed item is a usage error."""
    environment = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or any(char.isspace() for char in key.strip()):
            raise UsageError(f"--env needs KEY=VALUE, got '{item}'")
        environment[key.strip()] = value
    return environment


CellCallback = Callable[[Cell, str], None]


def window_plan(options: BenchOptions, seconds_per_iteration: float) -> int:
    """Iterations per timed window: fixed, or enough to fill ``duration`` over ``runs`` windows."""
    if options.iterations is not None:
        return options.iterations
    assert options.duration is not None
    return max(1, round(options.duration / options.runs / max(seconds_per_iteration, 1e-9)))


# ---------------------------------------------------------------- inside a worker


@dataclass(frozen=True)
class LoopRecipe:
    """How a worker builds a cell's loop: a factory named by import path, its (picklable) keyword arguments,
    and the size of the built-in content/style pair it receives as ``content`` and ``style``.

    The parent never builds loops; naming the factory lets tests hand a worker a loop that crashes or hangs.
    """

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[int, int] | None = None  # (width, height) of the demo pair; None: the factory takes no images


def _resident_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_resident_bytes() -> int:
    """This process's RSS high-water mark, kept by the kernel: nothing sampled, nothing missed.

    (Linux folds per-thread counters into it lazily, so it can trail the current RSS by a few pages.)
    """
    import psutil

    info = psutil.Process().memory_info()
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(int(info.rss), int(peak if sys.platform == "darwin" else peak * 1024))
    except ImportError:
        return int(getattr(info, "peak_wset", info.rss))


class CellSession:
    """One cell's loop inside its worker: built once, then driven call by call by the parent.

    Every clock is read here, next to the loop, and every GPU queue drained before it is read; the parent
    only decides what runs when.
    """

    def __init__(self, recipe: LoopRecipe, device: str, threads: int) -> None:
        from onnxstyle.interference import allowed_cpus

        self.recipe = recipe
        self.device = device
        torch.set_num_threads(threads)
        self.cpus = allowed_cpus()
        self.rss_before = _resident_bytes()
        self.device_free_before = _device_free(device)
        self.device_free_least = self.device_free_before
        self.loop: Loop | None = None
        self.loss = math.nan

    def setup(self) -> dict[str, Any]:
        """Build the loop (graphs, sessions, weights on the device, targets): the cell's set-up time."""
        from onnxstyle.workers import _resolve

        started = time.perf_counter()
        images: dict[str, torch.Tensor] = {}
        if self.recipe.inputs is not None:
            images["content"], images["style"] = demo_pair(*self.recipe.inputs)
        self.loop = _resolve(self.recipe.factory)(**self.recipe.kwargs, **images)
        _synchronize(self.device)
        seconds = time.perf_counter() - started
        digest = hashlib.sha256()
        for image in images.values():
            digest.update(image.numpy().tobytes())
        return {
            "setup_seconds": seconds,
            "engine": dict(self.loop.describe()),
            "rss_before_bytes": self.rss_before,
            "inputs_sha256": digest.hexdigest() if images else "",
        }

    def _step(self) -> float:
        assert self.loop is not None, "setup() first"
        self.loss = self.loop.step()
        return self.loss

    def first_iteration(self) -> tuple[float, float]:
        """(seconds, loss) of the first step, which pays for lazy initialisation and so is reported apart."""
        started = time.perf_counter()
        loss = self._step()
        _synchronize(self.device)
        return time.perf_counter() - started, loss

    def warm_up(self, count: int) -> float | None:
        """``count`` untimed steps; the last one's seconds (None for none), which sizes the windows."""
        seconds = None
        for _ in range(count):
            started = time.perf_counter()
            self._step()
            _synchronize(self.device)
            seconds = time.perf_counter() - started
        self._note_device_memory()
        return seconds

    def window(self, count: int, round_index: int) -> tuple[Window, list[float], float]:
        """``count`` timed steps closed by a device synchronisation: (window, per-step seconds, last loss)."""
        from onnxstyle.interference import CpuSnapshot, WindowLoad

        assert self.loop is not None, "setup() first"
        steps = []
        engine_before = self.loop.engine_seconds
        _synchronize(self.device)
        before = CpuSnapshot.take(self.cpus)
        for _ in range(count):
            tick = time.perf_counter()
            self._step()
            steps.append(time.perf_counter() - tick)
        _synchronize(self.device)
        after = CpuSnapshot.take(self.cpus)
        load = WindowLoad.between(before, after)
        self._note_device_memory()
        window = Window(
            count, after.wall - before.wall, self.loop.engine_seconds - engine_before, round_index,
            load.cpu_seconds, load.busy_seconds, load.steal_seconds, load.load_average, len(self.cpus),
        )
        return window, steps, self.loss

    def _note_device_memory(self) -> None:
        free = _device_free(self.device)
        if free is not None and self.device_free_least is not None:
            self.device_free_least = min(self.device_free_least, free)

    def finish(self) -> dict[str, Any]:
        """What the worker used: peak RSS, device memory, and the threads each library ran with."""
        import psutil

        engine = self.loop.describe() if self.loop is not None else {}
        counts: dict[str, Any] = {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            "process": psutil.Process().num_threads(),
        }
        if engine.get("engine") == "onnxruntime":
            counts["onnxruntime_intra_op"] = engine.get("threads")
        for variable in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"):
            if variable in os.environ:
                counts[variable] = os.environ[variable]
        used = None
        if self.device_free_before is not None and self.device_free_least is not None:
            used = self.device_free_before - self.device_free_least
        return {
            "peak_rss_bytes": _peak_resident_bytes(),
            "device_peak_bytes": int(torch.cuda.max_memory_allocated()) if self.device.startswith("cuda") else None,
            "device_used_bytes": used,
            "thread_counts": counts,
        }


def _device_free(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info()
    return int(free)


# ---------------------------------------------------------------- the parent: scheduling workers


@dataclass
class PendingCell:
    """A cell that passed every skip rule: what its worker builds, and whether it runs the gradient check."""

    cell: Cell
    runner: Runner
    recipe: LoopRecipe
    check: dict[str, Any] | None = None  # keyword arguments of check_gradient, run in this cell's worker


CELL_ERRORS = (OnnxstyleError, RuntimeError, MemoryError)
# Imported before a worker reports ready, so a cell's set-up time covers graphs, sessions and targets, not
# Python imports that every runner pays alike.
WORKER_PRELOAD = (
    "torch", "onnxruntime", "onnxstyle.bench", "onnxstyle.engines.torch_engine", "onnxstyle.engines.onnxruntime_engine",
    "onnxstyle.engines.eager", "onnxstyle.tiling",
)
# A fresh worker's RSS after WORKER_PRELOAD, measured at 257 MB on the project's machine (Intel Xeon, torch
# 2.13, onnxruntime 1.31), rounded up; interleaved cells keep one worker each resident.
WORKER_BASE_BYTES = 300 * 2**20


def cell_recipe(
    runner: Runner, spec: EngineSpec, width: int, height: int, threads: int, precision: str, tile: int | None, cuda_graph: bool
) -> LoopRecipe:
    """What a cell's worker builds: ``build_loop`` on the built-in image pair at the cell's size."""
    kwargs = {"runner": runner, "spec": spec, "threads": threads, "precision": precision, "tile": tile, "cuda_graph": cuda_graph}
    return LoopRecipe("onnxstyle.bench:build_loop", kwargs, (width, height))


def worker_environment(runner: Runner, threads: int, extra: dict[str, str]) -> dict[str, str]:
    """Process-global settings, fixed before the interpreter starts, then the user's ``--env``.

    Libraries that read a thread count at load time get the pinned one; in an ONNX Runtime worker they get
    one, as ORT's own pool owns the cores and torch runs only the optimiser step there. Measured in isolated
    ORT workers on an Intel Xeon (3 runs each, NIN/VGG19 at 64 and 256 px): with ``OMP_NUM_THREADS=1`` the
    median it/min was 0.4-3% above the default and ``OMP_WAIT_POLICY=PASSIVE``, in all four cells.
    """
    count = "1" if runner.engine == "onnxruntime" else str(threads)
    environment = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}
    environment.update(extra)
    return environment


def open_worker(label: str, environment: dict[str, str], log_dir: Path, connect: bool = True) -> Any:
    """A fresh worker process importing torch and onnxruntime (tests substitute in-process hosts)."""
    from onnxstyle.workers import Worker

    return Worker(label, log_dir=log_dir, environment=environment, preload=WORKER_PRELOAD, connect=connect)


def open_cell_workers(group: Sequence[PendingCell], options: BenchOptions, log_dir: Path) -> list[Any]:
    """Start every worker of a group at once; nothing is timed while their interpreters start and import."""
    workers = []
    for pending in group:
        cell, runner = pending.cell, pending.runner
        cell.environment = worker_environment(runner, cell.threads or default_threads(), options.environment)
        label = f"{runner.label}-{cell.model}-{cell.width}x{cell.height}-{cell.precision}"
        workers.append(open_worker(label, cell.environment, log_dir, connect=False))
    return workers


def _fail(cell: Cell, error: BaseException) -> None:
    from onnxstyle.providers import first_line

    cell.status, cell.reason = "failed", first_line(error)
    cell.error_code = error.exit_code if isinstance(error, OnnxstyleError) else WorkerError.exit_code


def _deadline(options: BenchOptions, expected_seconds: float) -> float:
    """How long a worker may take: generous against what the cell should take, never less than ``hang_seconds``."""
    return options.hang_seconds + 20.0 * expected_seconds


class CellRun:
    """A cell whose worker is set up and warmed up: the handle, the window length, the expected step time."""

    def __init__(self, pending: PendingCell, worker: Any, count: int, seconds_per_iteration: float) -> None:
        self.pending = pending
        self.cell = pending.cell
        self.worker = worker
        self.count = count
        self.seconds_per_iteration = seconds_per_iteration
        self.loss = pending.cell.first_loss if pending.cell.first_loss is not None else math.nan


def start_cell(
    pending: PendingCell, worker: Any, options: BenchOptions, roofs: dict[str, GemmRate], progress: CellCallback | None = None
) -> CellRun:
    """Set the cell up in its started worker, time its first iteration apart, warm it up, and size its windows."""
    cell, runner = pending.cell, pending.runner
    say = progress or (lambda _cell, _text: None)
    roof = roofs.get(runner.device)
    expected = (cell.gflop_per_iteration or 0.0) / roof.gflops if roof else 60.0
    say(cell, "setup")
    worker.start("onnxstyle.bench:CellSession", _deadline(options, expected), recipe=pending.recipe, device=runner.device, threads=cell.threads or default_threads())
    setup = worker.call("setup", _deadline(options, 2 * expected))
    cell.setup_seconds, cell.engine = setup["setup_seconds"], setup["engine"]
    cell.rss_before_bytes, cell.inputs_sha256 = setup["rss_before_bytes"], setup["inputs_sha256"]
    cell.first_iteration_seconds, cell.first_loss = worker.call("first_iteration", _deadline(options, expected), stage="the first iteration")
    per_iteration = cell.first_iteration_seconds
    if options.warmup:
        say(cell, f"warm-up ({options.warmup} it)")
        warm = worker.call("warm_up", _deadline(options, options.warmup * max(expected, per_iteration)), stage="warm-up", count=options.warmup)
        per_iteration = warm if warm is not None else per_iteration
    cell.warmup = options.warmup
    return CellRun(pending, worker, window_plan(options, per_iteration), per_iteration)


def time_window(run: CellRun, round_index: int, rounds: int, options: BenchOptions, others: Sequence[Any], progress: CellCallback | None) -> None:
    """One timed window in the worker; the parent meanwhile adds up the CPU time of the bench's other processes."""
    if progress:
        progress(run.cell, f"window {round_index + 1}/{rounds} ({run.count} it)")
    idle_before = time.process_time() + sum(worker.cpu_seconds() for worker in others)
    timeout = _deadline(options, run.count * run.seconds_per_iteration)
    window, steps, run.loss = run.worker.call("window", timeout, stage=f"window {round_index + 1}", count=run.count, round_index=round_index)
    window.bench_cpu_seconds = max(0.0, time.process_time() + sum(worker.cpu_seconds() for worker in others) - idle_before)
    if window.busy_seconds is not None and window.cpu_seconds is not None:
        window.other_cpu_seconds = max(0.0, window.busy_seconds - window.cpu_seconds - window.bench_cpu_seconds)
    run.cell.windows.append(asdict(window))
    run.cell.iteration_seconds.extend(steps)


def finish_cell(run: CellRun, roofs: dict[str, GemmRate]) -> None:
    """Median and spread over the windows, the noise verdict, memory, threads, loop overhead and final loss."""
    from onnxstyle.interference import noise_reasons

    cell = run.cell
    cell.final_loss = run.loss
    used = run.worker.call("finish", 60.0)
    cell.peak_rss_bytes, cell.device_peak_bytes = used["peak_rss_bytes"], used["device_peak_bytes"]
    cell.device_used_bytes, cell.thread_counts = used["device_used_bytes"], used["thread_counts"]
    if not math.isfinite(run.loss):
        raise NumericalError(f"loss became {run.loss} during the benchmark")
    rates = [60.0 * window["iterations"] / window["seconds"] for window in cell.windows]
    cell.stats = asdict(summarize(rates))
    total = sum(window["seconds"] for window in cell.windows)
    cell.overhead = max(0.0, 1.0 - sum(window["engine_seconds"] for window in cell.windows) / total)
    cell.noise = noise_reasons(cell.windows, rates)
    cell.noisy = bool(cell.noise)
    assert cell.gflop_per_iteration is not None
    cell.gflops = cell.gflop_per_iteration * cell.stats["median"] / 60.0
    roof = roofs.get(run.pending.runner.device)
    cell.roof_share = cell.gflops / roof.gflops if roof else None
    cell.status = "ok"


def run_group(
    group: list[PendingCell],
    options: BenchOptions,
    roofs: dict[str, GemmRate],
    log_dir: Path,
    progress: CellCallback | None = None,
    checks: dict[tuple[str, str, str], dict[str, Any]] | None = None,
) -> None:
    """Cells measured together, each in its own worker: all set up and warmed up, then their windows taken in
    rounds (ABC, BCA, CAB, …); a group of one is a cell measured alone.

    On a shared machine the load drifts by tens of percent within a minute; a ratio between runners is only
    worth quoting when both were timed under the same load, so each round times one window of every runner,
    and the report pairs windows by round. Only one worker computes at a time; the others wait idle, and
    whatever CPU they still use during another's window is counted against that window. A failing, crashing
    or hanging worker fails its own cell only. Ctrl-C kills every worker of the group and propagates.
    """
    runs: list[CellRun] = []
    if progress:
        progress(group[0].cell, "starting workers")
    workers = open_cell_workers(group, options, log_dir)
    try:
        started = []
        for pending, worker in zip(group, workers, strict=True):
            try:
                worker.connect()
                started.append((pending, worker))
            except CELL_ERRORS as error:
                _fail(pending.cell, error)
        for pending, worker in started:
            try:
                runs.append(start_cell(pending, worker, options, roofs, progress))
                pending.cell.interleaved = len(group) > 1
            except CELL_ERRORS as error:
                _fail(pending.cell, error)
                worker.kill()
        for round_index in range(options.runs):
            live = [run for run in runs if run.cell.status == "pending"]
            if not live:
                break
            shift = round_index % len(live)
            for run in live[shift:] + live[:shift]:
                try:
                    others = [other.worker for other in runs if other is not run and other.worker.alive]
                    time_window(run, round_index, options.runs, options, others, progress)
                except CELL_ERRORS as error:
                    _fail(run.cell, error)
                    run.worker.kill()
        for run in runs:
            if run.cell.status != "pending":
                continue
            try:
                finish_cell(run, roofs)
                if run.pending.check is not None and checks is not None:
                    key = (run.cell.runner, run.cell.model, run.cell.precision)
                    if progress:
                        progress(run.cell, "gradient check")
                    try:
                        checks[key] = run.worker.run("onnxstyle.bench:check_gradient", _deadline(options, 60.0), **run.pending.check)
                    except CELL_ERRORS as error:
                        from onnxstyle.providers import first_line

                        checks[key] = {"ok": False, "error": first_line(error)}
                    run.cell.check = checks[key]
            except CELL_ERRORS as error:
                _fail(run.cell, error)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    finally:
        for worker in workers:
            worker.close()


def interleavable(group: Sequence[PendingCell], options: BenchOptions) -> bool:
    """Interleave only untiled cells that fit in half the free memory together: all their workers stay resident."""
    if not options.interleave or len(group) < 2 or any(pending.cell.tile for pending in group):
        return False
    needed = sum((pending.cell.estimate_bytes or 0) + WORKER_BASE_BYTES for pending in group)
    return needed <= 0.5 * min(free_bytes(pending.runner) for pending in group)


def measure_roofs(devices: Sequence[str], threads: int, options: BenchOptions, log_dir: Path) -> dict[str, GemmRate]:
    """The fp32 GEMM roof of each device, each in a worker of its own (one that fails leaves its roof out)."""
    roofs: dict[str, GemmRate] = {}
    for device in devices:
        worker = open_worker(f"gemm-{device}", worker_environment(Runner("torch", device), threads, options.environment), log_dir)
        try:
            roofs[device] = worker.run("onnxstyle.bench:measure_gemm", _deadline(options, 10.0), device=device, threads=threads)
        except CELL_ERRORS:
            pass
        finally:
            worker.close()
    return roofs


@dataclass
class BenchRun:
    """A run as far as it got: the cells (finished, skipped, pending), the GEMM roofs, and whether it was cut short."""

    cells: list[Cell] = field(default_factory=list)
    roofs: dict[str, GemmRate] = field(default_factory=dict)
    interrupted: bool = False


def run_bench(
    options: BenchOptions,
    progress: CellCallback | None = None,
    on_cell: Callable[[Cell, BenchRun], None] | None = None,
) -> tuple[list[Cell], dict[str, GemmRate], bool]:
    """Measure every cell; returns (cells, GEMM roofs by device, interrupted?).

    ``on_cell`` hears each cell as it finishes, with the run so far (to write the report after every cell).
    Ctrl-C keeps the finished cells; the ones it cut short are ``interrupted`` and those it never reached
    are listed as ``not run``.
    """
    import shutil
    import tempfile

    threads = min(options.threads or default_threads(), default_threads())
    run = BenchRun()
    cells = run.cells
    resolved: dict[str, ResolvedWeights] = {}
    checks: dict[tuple[str, str, str], dict[str, Any]] = {}
    for runner, reason in options.skipped.items():
        for model in options.models:
            for width, height in options.sizes:
                for precision in options.precisions:
                    cells.append(Cell(runner.label, model.name, width, height, precision, status="skipped", reason=reason))

    def notify(cell: Cell) -> None:
        if on_cell:
            on_cell(cell, run)

    def prepare(runner: Runner, model: BackboneSpec, width: int, height: int, precision: str) -> PendingCell | None:
        """The cell, unless a skip rule applies (then it is finished here)."""
        cell = Cell(runner.label, model.name, width, height, precision, threads=threads)
        cells.append(cell)
        if model.name not in resolved:
            resolved[model.name] = resolve(options.weights, model)
        spec = engine_spec(model, resolved[model.name])
        cell.weights = resolved[model.name].label
        layers = spec.layers
        minimum = model.min_size(layers)
        if min(width, height) < minimum:
            return _skip(cell, f"smaller than {model.name}'s minimum {minimum}x{minimum}", notify)
        unsupported = precision_support(runner, precision)
        if unsupported:
            return _skip(cell, unsupported, notify)
        cell.estimate_bytes = estimate_bytes(runner, model, layers, width, height)
        try:
            cell.tile = cell_tile(runner, spec, width, height, options.tile, free_bytes(runner))
        except UsageError as error:
            return _skip(cell, str(error), notify)
        if cell.tile:
            from onnxstyle.tiling import TilePlan

            rows, cols = TilePlan.create(model, layers, height, width, cell.tile).largest_tile
            cell.estimate_bytes = estimate_bytes(runner, model, layers, cols, rows)
        cell.gflop_per_iteration = iteration_flops(model, spec.content_layers, spec.style_layers, width, height) / 1e9
        cell.cuda_graph = options.cuda_graph and takes_cuda_graph(runner)
        recipe = cell_recipe(runner, spec, width, height, threads, precision, cell.tile, cell.cuda_graph)
        check = None
        if options.check and (runner.label, model.name, precision) not in checks:
            check = {"runner": runner, "spec": spec, "threads": threads, "precision": precision}
        return PendingCell(cell, runner, recipe, check)

    log_dir = Path(tempfile.mkdtemp(prefix="onnxstyle-workers-"))
    try:
        run.roofs.update(measure_roofs(sorted({runner.device for runner in options.runners}), threads, options, log_dir))
        # Runners of one model and size are measured together (interleaved where they fit), so a ratio
        # between them (×eager) is taken under the same load, not across the whole run while it drifts.
        for model in options.models:
            for width, height in options.sizes:
                group = [
                    pending
                    for precision in options.precisions
                    for runner in options.runners
                    if (pending := prepare(runner, model, width, height, precision)) is not None
                ]
                batches = [group] if interleavable(group, options) else [[pending] for pending in group]
                for batch in batches:
                    run_group(batch, options, run.roofs, log_dir, progress, checks)
                    for pending in batch:
                        if pending.cell.check is None:
                            pending.cell.check = checks.get((pending.cell.runner, pending.cell.model, pending.cell.precision))
                        notify(pending.cell)
    except KeyboardInterrupt:
        run.interrupted = True
        for cell in cells:
            if cell.status == "pending":
                cell.status, cell.reason = "interrupted", "Ctrl-C before this cell finished"
        started = {cell.key for cell in cells}
        for model in options.models:
            for width, height in options.sizes:
                for precision in options.precisions:
                    for runner in options.runners:
                        if (runner.label, model.name, width, height, precision) not in started:
                            cells.append(Cell(runner.label, model.name, width, height, precision, status="not run", reason="the run was interrupted before it"))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return cells, run.roofs, run.interrupted


def _skip(cell: Cell, reason: str, notify: Callable[[Cell], None]) -> PendingCell | None:
    """Finish ``cell`` as skipped; returns None, which ``prepare`` hands back as 'nothing to run'."""
    cell.status, cell.reason = "skipped", reason
    notify(cell)
    return None
