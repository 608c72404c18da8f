"""Where do the milliseconds of one loss+gradient go? ONNX Runtime's own profiler, per node and per operator.

This is how the CPU graph's speed work was steered (VGG19 at 256 px: ≈80% of kernel time in Conv, each
convolution near the FMA peak, hence Winograd rather than more kernel tuning); ``onnxstyle profile``
lets anyone repeat it on their provider and machine.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from onnxstyle.backbones import get_backbone
from onnxstyle.bench.options import check_counts, check_threads
from onnxstyle.errors import UsageError


@dataclass(frozen=True)
class NodeTime:
    """One graph node's kernel time per run (ORT's ``*_kernel_time`` events, averaged over the profiled runs)."""

    name: str
    op_type: str
    milliseconds: float


@dataclass
class LossProfile:
    """The profiled runs of one loss+gradient session."""

    model: str
    width: int
    height: int
    provider: str
    runs: int
    run_milliseconds: float  # mean wall time of ORT's model_run events
    conv_algorithm: str
    nodes: list[NodeTime] = field(default_factory=list)

    @property
    def kernel_milliseconds(self) -> float:
        return sum(node.milliseconds for node in self.nodes)

    def by_operator(self) -> list[tuple[str, float, float]]:
        """(operator, ms per run, share of kernel time), largest first; ORT's layout reorders count as operators."""
        totals: Counter[str] = Counter()
        for node in self.nodes:
            totals[node.op_type] += node.milliseconds
        kernel = self.kernel_milliseconds or 1.0
        return [(op_type, ms, ms / kernel) for op_type, ms in totals.most_common()]

    def slowest(self, count: int) -> list[NodeTime]:
        return sorted(self.nodes, key=lambda node: node.milliseconds, reverse=True)[:count]


def parse_profile(events: list[dict[str, object]], runs: int) -> tuple[float, list[NodeTime]]:
    """(mean model_run ms, per-node kernel ms per run) over the last ``runs`` runs of an ORT profile file."""
    model_runs = sorted((event for event in events if event.get("name") == "model_run"), key=lambda event: float(event["ts"]))  # type: ignore[arg-type]
    if len(model_runs) < runs:
        raise UsageError(f"the ONNX Runtime profile holds {len(model_runs)} runs, fewer than the {runs} asked for")
    counted = model_runs[-runs:]
    start = float(counted[0]["ts"])  # type: ignore[arg-type]
    totals: Counter[tuple[str, str]] = Counter()
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") == "Node" and name.endswith("_kernel_time") and float(event["ts"]) >= start:  # type: ignore[arg-type]
            args = event.get("args")
            op_type = str(args.get("op_name", "?")) if isinstance(args, dict) else "?"
            totals[(name.removesuffix("_kernel_time"), op_type)] += float(event["dur"])  # type: ignore[arg-type]
    nodes = [NodeTime(name, op_type, microseconds / runs / 1000) for (name, op_type), microseconds in totals.items()]
    return sum(float(event["dur"]) for event in counted) / runs / 1000, nodes  # type: ignore[arg-type]


def parse_conv(text: str) -> bool | None:
    """``--conv``: auto (as stylize and bench build the graph: None), direct (False) or winograd (True)."""
    choices = {"auto": None, "direct": False, "winograd": True}
    if text not in choices:
        raise UsageError(f"--conv must be auto, direct or winograd, got '{text}'")
    return choices[text]


def profile_loss(
    *,
    model: str = "vgg19",
    size: tuple[int, int] = (256, 256),
    provider: str = "cpu",
    threads: int | None = None,
    runs: int = 5,
    warmup: int = 2,
    weights: str = "auto",
    winograd: bool | None = None,
) -> LossProfile:
    """Profile ``runs`` loss+gradient runs of ``model`` at ``size`` (width, height) after ``warmup`` unprofiled ones.

    ``winograd`` None lets the engine choose (CPU fp32: the wide 3×3 layers), so the figures are what
    ``stylize`` and ``bench`` run; True/False forces it for an A/B.
    """
    from onnxstyle.engines import EngineSpec
    from onnxstyle.engines.onnxruntime_engine import OnnxRuntimeEngine
    from onnxstyle.images import demo_pair
    from onnxstyle.ort_providers import ProviderConfig, canonical
    from onnxstyle.sysinfo import default_threads
    from onnxstyle.weights import resolve

    check_counts(runs, warmup)
    check_threads(threads)
    backbone = get_backbone(model)
    spec = EngineSpec.defaults(backbone, resolve(weights, backbone))
    width, height = size
    if (problem := backbone.size_problem(spec.layers, width, height)) is not None:
        raise UsageError(problem)
    with tempfile.TemporaryDirectory(prefix="onnxstyle-profile-") as directory:
        config = ProviderConfig(canonical(provider), threads=min(threads or default_threads(), default_threads()), profile_prefix=str(Path(directory) / "loss"))
        engine = OnnxRuntimeEngine(spec, config, [(height, width)], winograd=winograd)
        content, style = demo_pair(width, height)
        engine.set_targets(engine.build_targets(content, [style], [1.0], spec.loss_weights()))
        image = content.to(engine.device)
        for _ in range(warmup + runs):
            engine.loss_and_grad(image)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        path = engine.end_profiling("loss")
        events = json.loads(Path(path).read_text())
    run_milliseconds, nodes = parse_profile(events, runs)
    return LossProfile(backbone.name, width, height, config.provider, runs, run_milliseconds, engine.conv_algorithm, nodes)
